"""``sibnet segment train | evaluate | predict``: gland segmentation with a classifier's encoder.

``train`` builds a U-Net (:mod:`sibnet.models.unet`) on the encoder of a classifier checkpoint
(``--encoder-checkpoint``, frozen unless ``--unfreeze``) or on a freshly initialised backbone
(``--scratch``, encoder trained with the decoder), trains it (:mod:`sibnet.segmentation.train`)
on images resized to ``--size HxW`` and writes ``OUT/model.pt``, ``OUT/history.csv`` and
``OUT/settings.yaml``. ``evaluate`` scores a model on a split with the GlaS challenge metrics at
the original image size (``OUT/scores.json``, ``OUT/per_image.csv``); ``predict`` writes instance
maps ``<id>_pred.png`` (8-bit, 16-bit beyond 255 glands). Settings may come from ``--config FILE``
(YAML, keys = the long flag names with ``_``); flags given on the command line win.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path

from ..errors import ConfigError

TRAIN_DEFAULTS = dict(dataset="glas", root=None, split="train", limit=None, backbone="densenet121",
                      encoder_checkpoint=None, scratch=False, unfreeze=False, size="128x192", epochs=20,
                      batch_size=4, lr=1e-3, seed=0, augment=True, decoder_channels="128,64,32,16,16",
                      threads=None, out=None)


def _size(text) -> tuple[int, int]:
    try:
        parts = [int(v) for v in str(text).lower().replace(",", "x").split("x")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or min(parts) < 32 or parts[0] % 32 or parts[1] % 32:
        raise ConfigError(f"--size must be HxW with multiples of 32 (e.g. 128x192), got {text!r}")
    return parts[0], parts[1]


def _channels(text) -> tuple[int, ...]:
    try:
        vals = tuple(int(v) for v in str(text).split(","))
    except ValueError:
        vals = ()
    if len(vals) != 5 or min(vals) < 1:
        raise ConfigError(f"--decoder-channels must be 5 positive comma-separated numbers, got {text!r}")
    return vals


def _common(p, split: str) -> None:
    p.add_argument("--dataset", default=None, help="glas (default) or synthetic-glands")
    p.add_argument("--root", default=None, help="the GlaS folder")
    p.add_argument("--split", default=None, help=f"split to use (default {split})")
    p.add_argument("--limit", type=int, default=None, help="only the first N images of the split")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")


def register(subparsers) -> None:
    p = subparsers.add_parser("segment", help="gland segmentation with a U-Net on a classifier's encoder",
                              description=__doc__.split("\n\n", 1)[1],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="segment_command", metavar="ACTION")
    t = sub.add_parser("train", help="train a U-Net", epilog="examples:\n"
                       "  sibnet segment train --root ../shared/data/glas --encoder-checkpoint runs/cls/best.pt "
                       "--out runs/seg\n"
                       "  sibnet segment train --config configs/segment.yaml --scratch --out runs/seg-scratch",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("--config", metavar="FILE", help="YAML file of settings (keys: the flags' long names)")
    _common(t, "train")
    t.add_argument("--encoder-checkpoint", metavar="CKPT", default=None, help="classifier checkpoint (sibnet train)")
    t.add_argument("--scratch", action="store_true", default=None, help="fresh backbone, trained with the decoder")
    t.add_argument("--backbone", default=None, help="with --scratch: densenet121 (default), resnet18/50/101")
    t.add_argument("--unfreeze", action="store_true", default=None, help="train the checkpoint's encoder too")
    t.add_argument("--size", default=None, help="network input HxW, multiples of 32 (default 128x192)")
    t.add_argument("--epochs", type=int, default=None, help="epochs (default 20)")
    t.add_argument("--batch-size", type=int, default=None, help="batch size (default 4)")
    t.add_argument("--lr", type=float, default=None, help="Adam learning rate (default 1e-3)")
    t.add_argument("--seed", type=int, default=None, help="seed of the initialisation and data order (default 0)")
    t.add_argument("--no-augment", dest="augment", action="store_false", default=None, help="no random flips")
    t.add_argument("--decoder-channels", default=None, help="5 numbers (default 128,64,32,16,16)")
    t.add_argument("--out", default=None, help="output folder (required)")
    t.set_defaults(func=run_train)

    e = sub.add_parser("evaluate", help="GlaS scores of a trained U-Net on a split")
    e.add_argument("checkpoint", help="OUT/model.pt of segment train")
    _common(e, "testA")
    e.add_argument("--min-area", type=int, default=0, help="drop predicted objects smaller than this (pixels)")
    e.add_argument("--out", default=None, help="folder for scores.json and per_image.csv")
    e.add_argument("--save-predictions", action="store_true", help="also write instance PNGs into OUT")
    e.set_defaults(func=run_evaluate)

    q = sub.add_parser("predict", help="instance-map PNGs of a split or of image files")
    q.add_argument("checkpoint", help="OUT/model.pt of segment train")
    _common(q, "testA")
    q.add_argument("--images", nargs="+", default=None, help="image files instead of a dataset split")
    q.add_argument("--min-area", type=int, default=0, help="drop predicted objects smaller than this (pixels)")
    q.add_argument("--out", required=True, help="folder for <id>_pred.png")
    q.set_defaults(func=run_predict)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def _settings(args) -> dict:
    s = dict(TRAIN_DEFAULTS)
    if args.config:
        from ..config import read_yaml

        data = read_yaml(args.config) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{args.config}: expected a mapping of settings")
        for k, v in data.items():
            key = str(k).replace("-", "_")
            if key not in s:
                raise ConfigError(f"{args.config}: unknown setting {k!r} (known: {', '.join(sorted(s))})")
            s[key] = v
    for k in s:
        v = getattr(args, k, None)
        if v is not None:
            s[k] = v
    return s


def _threads(n) -> None:
    if n:
        import torch

        torch.set_num_threads(int(n))


def run_train(args) -> int:
    import torch
    import yaml

    from ..models.unet import build_unet
    from ..segmentation.data import class_weights, load_samples, prepare
    from ..segmentation.train import save_segmenter, train_segmenter, unet_from_checkpoint

    s = _settings(args)
    if not s["out"]:
        raise ConfigError("segment train: --out is required")
    if bool(s["scratch"]) == bool(s["encoder_checkpoint"]):
        raise ConfigError("segment train: give exactly one of --encoder-checkpoint CKPT and --scratch")
    size, dec = _size(s["size"]), _channels(s["decoder_channels"])
    _threads(s["threads"])
    torch.manual_seed(int(s["seed"]))  # both branches build a classifier first, then the same decoder
    if s["scratch"]:
        net = build_unet(str(s["backbone"]), 3, freeze_encoder=False, decoder_channels=dec)
        normalize, source = None, "scratch"
    else:
        net, cmeta = unet_from_checkpoint(s["encoder_checkpoint"], freeze_encoder=not s["unfreeze"],
                                          decoder_channels=dec)
        normalize, source = cmeta.get("normalisation"), str(s["encoder_checkpoint"])
    samples = load_samples(s["dataset"], s["root"], s["split"], limit=s["limit"], seed=int(s["seed"]))
    x, y = prepare(samples, size, normalize)
    w = class_weights(y)
    out = Path(s["out"])
    out.mkdir(parents=True, exist_ok=True)
    print(f"{len(samples)} images at {size[0]}x{size[1]}, encoder {net.backbone} from {source} "
          f"({'frozen' if net.frozen else 'trained'}), class weights {[round(v, 3) for v in w.tolist()]}", flush=True)
    hist = train_segmenter(net, x, y, epochs=int(s["epochs"]), batch_size=int(s["batch_size"]), lr=float(s["lr"]),
                           seed=int(s["seed"]), weights=w, augment=bool(s["augment"]),
                           log=lambda m: print(m, flush=True))
    meta = {"model_name": f"unet-{net.backbone}", "backbone": net.backbone, "in_channels": net.in_channels,
            "num_classes": 2, "class_names": ["background", "gland"], "task": "segmentation",
            "image_size": list(size), "normalisation": normalize, "decoder_channels": list(dec),
            "freeze_encoder": net.frozen, "encoder_source": source, "dataset": s["dataset"]}
    save_segmenter(out / "model.pt", net, meta, hist)
    with open(out / "history.csv", "w", newline="") as fh:
        wr = csv.DictWriter(fh, fieldnames=["epoch", "loss", "seconds"])
        wr.writeheader()
        wr.writerows(hist)
    (out / "settings.yaml").write_text(yaml.safe_dump({k: (list(v) if isinstance(v, tuple) else v)
                                                       for k, v in s.items()}, sort_keys=True))
    print(json.dumps({"model": str(out / "model.pt"), "epochs": len(hist),
                      "seconds": round(sum(h["seconds"] for h in hist), 1), "final_loss": hist[-1]["loss"]}, indent=2))
    return 0


def _load(args):
    from ..segmentation.train import load_segmenter

    _threads(args.threads)
    net, meta = load_segmenter(args.checkpoint)
    dataset = args.dataset or meta.get("dataset", "glas")
    return net, meta, dataset


def run_evaluate(args) -> int:
    from ..segmentation.data import load_samples
    from ..segmentation.predict import evaluate_predictions, predict_samples

    net, meta, dataset = _load(args)
    samples = load_samples(dataset, args.root, args.split or "testA", limit=args.limit)
    out = Path(args.out) if args.out else None
    preds = predict_samples(net, samples, tuple(meta["image_size"]), meta.get("normalisation"),
                            min_area=args.min_area, out_dir=out if args.save_predictions else None)
    scores = evaluate_predictions(samples, preds)
    summary = {k: v for k, v in scores.items() if k != "per_image"}
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "scores.json").write_text(json.dumps(_finite(scores), indent=2))
        keys = ["id", "grade", "tp", "fp", "fn", "f1", "object_dice", "object_hausdorff", "pixel_dice", "pixel_hd95"]
        with open(out / "per_image.csv", "w", newline="") as fh:
            wr = csv.DictWriter(fh, fieldnames=keys, extrasaction="ignore")
            wr.writeheader()
            wr.writerows(scores["per_image"])
    print(json.dumps(_finite(summary), indent=2))
    return 0


def _finite(obj):
    """JSON-safe copy: inf/nan become the strings 'inf'/'nan'."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    return obj


def run_predict(args) -> int:
    import numpy as np

    from ..data.imageio import read_image
    from ..segmentation.data import Sample, load_samples
    from ..segmentation.predict import predict_samples

    net, meta, dataset = _load(args)
    if args.images:
        samples = []
        for f in args.images:
            arr, hi = read_image(f, int(meta["in_channels"]))
            samples.append(Sample(Path(f).stem, np.asarray(arr, np.float32) / np.float32(hi),
                                  np.zeros(arr.shape[:2], np.int64)))
    else:
        samples = load_samples(dataset, args.root, args.split or "testA", limit=args.limit)
    maps = predict_samples(net, samples, tuple(meta["image_size"]), meta.get("normalisation"),
                           min_area=args.min_area, out_dir=args.out)
    print(f"wrote {len(maps)} instance maps to {args.out}", file=sys.stderr)
    return 0
