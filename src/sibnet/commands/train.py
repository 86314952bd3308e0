"""``sibnet train``: train a classifier with (or without) the SIBNet loss terms."""

from __future__ import annotations

import argparse
import json
import sys

from ..config import RESUMABLE_CHANGES

FLAGS = [  # (flag, config key, type, help)
    ("--dataset", "data.name", str, "dataset name: synthetic (default), synthetic-glands, chexpert, nih, "
                                    "glas, busi, medmnist, csv"),
    ("--root", "data.root", str, "folder of the dataset's files (needed by every dataset but the synthetic ones)"),
    ("--model", "model.name", str, "densenet121 (default), resnet18, resnet50, resnet101"),
    ("--pretrained", "model.pretrained", str, "local torchvision-style ImageNet state dict (.pth) to start from"),
    ("--saliency", "loss.saliency", str, "saliency method of the loss terms (gradcam default, deep_taylor, "
                                         "lrp_epsilon, ...); 'none' trains the plain weighted-BCE/CE baseline"),
    ("--lambda-cd", "loss.lambda_cd", float, "weight of the class-distinctiveness term (default: the method's)"),
    ("--lambda-sc", "loss.lambda_sc", float, "weight of the spatial-coherence term (default: the method's)"),
    ("--epochs", "train.epochs", int, "number of epochs (default 50)"),
    ("--max-steps", "train.max_steps", int, "stop after this many optimizer steps"),
    ("--batch-size", "data.batch_size", int, "labeled batch size per process (default 16)"),
    ("--image-size", "data.image_size", int, "square input size in pixels (default 128)"),
    ("--lr", "optim.lr", float, "Adam learning rate (default 1e-3)"),
    ("--fold", "data.fold", int, "cross-validation fold to train (0-based)"),
    ("--folds", "data.folds", int, "number of cross-validation folds (default 5)"),
    ("--patience", "train.patience", int, "early stopping after N epochs without a better validation AUROC"),
    ("--seed", "train.seed", int, "random seed (default 0)"),
    ("--device", "train.device", str, "auto (default: CUDA when available), cpu, cuda, cuda:N"),
    ("--precision", "train.precision", str, "auto (bf16/fp16 autocast on CUDA, fp32 on CPU), fp32, bf16, fp16"),
    ("--num-workers", "data.num_workers", int, "DataLoader worker processes (default 0)"),
    ("--out", "out", str, "output folder: checkpoints, metrics.csv, tensorboard/, config.yaml"),
]


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train", help="train a classifier (baseline, SIBNet or SIBNet+)",
        description="Train a classifier with the SIBNet loss (weighted BCE/CE + lambda_cd * class "
        "distinctiveness + lambda_sc * spatial coherence of its own saliency maps). Settings come from "
        "the defaults (see configs/default.yaml), then --config FILE, then the flags below, then "
        "KEY=VALUE overrides (e.g. train.epochs=3 loss.radius=2 optim.betas=[0.9,0.999]). "
        "Writes OUT/last.pt after every epoch, OUT/best.pt (best validation AUROC), OUT/metrics.csv, "
        "OUT/tensorboard and OUT/config.yaml. Several processes: torchrun --nproc_per_node=N -m sibnet train ...",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
        "  sibnet train --epochs 5 --out runs/sibnet\n"
        "  sibnet train --saliency none --out runs/baseline\n"
        "  sibnet train --config configs/nih.yaml --root ../shared/data/nih-cxr14 train.epochs=20\n"
        "  sibnet train --resume runs/sibnet/last.pt   # the run's own settings and folder\n"
        "  sibnet train --out runs/sibnet --resume auto   # continue if OUT holds a run, else start\n"
        "  torchrun --nproc_per_node=2 -m sibnet train --device cpu --out runs/ddp")
    p.add_argument("--config", metavar="FILE", help="YAML configuration file")
    for flag, key, typ, text in FLAGS:
        p.add_argument(flag, dest="flag:" + key, type=typ, default=None, metavar=flag[2:].replace("-", "_").upper(),
                       help=f"{text} [{key}]")
    p.add_argument("--unlabeled", metavar="SPLIT", default=None,
                   help="SIBNet+: add the dataset's unlabeled SPLIT (e.g. 'unlabeled') as an unlabeled pool "
                        "[unlabeled.enabled, unlabeled.split]; another dataset: unlabeled.name=NAME unlabeled.root=DIR")
    p.add_argument("--resume", nargs="?", const="", default=None, metavar="CKPT",
                   help="continue a run exactly from CKPT (default: OUT/last.pt) with the checkpoint's "
                        "configuration, in its folder (--out elsewhere: the run's files are copied there "
                        "first); flags may change only " + ", ".join(RESUMABLE_CHANGES) + ". 'auto': "
                        "continue the newest checkpoint in OUT if there is one, else start a new run")
    p.add_argument("--overwrite", action="store_true", help="start again in an OUT that already holds a run")
    p.add_argument("--no-progress", action="store_true", help="no progress bar or per-epoch lines")
    p.add_argument("--print-config", action="store_true", help="print the resolved configuration and exit")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="configuration overrides (anywhere on the line)")
    p.set_defaults(func=run)


def _settings(args) -> dict:
    from pathlib import Path

    if args.resume and "=" in args.resume and not Path(args.resume).exists():
        # `--resume key=value`: argparse took the first override for the optional CKPT
        args.overrides = [args.resume, *args.overrides]
        args.resume = ""

    settings = {k[5:]: v for k, v in vars(args).items() if k.startswith("flag:") and v is not None}
    if settings.get("loss.saliency", "").lower() in ("none", "null"):
        settings["loss.saliency"] = None
    if args.unlabeled:
        settings["unlabeled.enabled"] = True
        settings["unlabeled.split"] = args.unlabeled
    if args.no_progress:
        settings["train.progress"] = False
    return settings


def requested_out(args, settings: dict) -> str | None:
    """The output folder the command line asks for (``--out``, ``out=...``, the config file's), if any."""
    from ..config import parse_override, read_yaml

    out = settings.get("out")
    for text in args.overrides:
        parts, value = parse_override(text)
        if parts == ["out"]:
            out = value
    if out is None and args.config:
        out = read_yaml(args.config).get("out")
    return None if out is None else str(out)


def resolve(args) -> "Config":  # noqa: F821
    """The run's configuration; with ``--resume`` the checkpoint's, changed by the command line.

    Sets ``args.resume_path`` (the checkpoint to continue, or None for a new run).
    """
    from pathlib import Path

    from ..config import Config, load_config
    from ..training.trainer import load_resumable, newest_checkpoint, with_config_defaults

    settings = _settings(args)
    args.resume_path = None
    if args.resume is None:
        return load_config(args.config, args.overrides, settings)
    out = requested_out(args, settings)
    if args.resume == "auto":
        path = newest_checkpoint(out or Config().out)
        if path is None:  # nothing to continue: a new run
            return load_config(args.config, args.overrides, settings)
        if path.name != "last.pt":
            print(f"sibnet train: {Path(path).parent / 'last.pt'} is missing or unreadable; continuing from "
                  f"{path}", file=sys.stderr)
    else:
        path = Path(args.resume or f"{out or Config().out}/last.pt")
        if path.is_dir():
            path = path / "last.pt"
    saved = with_config_defaults(load_resumable(path)["config"])
    saved["out"] = out if out is not None else str(path.parent)
    args.resume_path = path
    return load_config(args.config, args.overrides, settings, base=saved)


def run(args) -> int:
    import yaml

    from ..training import Trainer

    cfg = resolve(args)
    if args.print_config:
        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
        return 0
    result = Trainer(cfg).fit(resume=args.resume_path, overwrite=args.overwrite)
    import os

    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(result, indent=2), file=sys.stdout)
    return 0
