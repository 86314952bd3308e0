"""``sibnet evaluate --checkpoint CKPT``: AUROC/AUPRC with bootstrap intervals and saliency agreement.

The dataset, its root, options, image size and seed default to the checkpoint's training
configuration (augmentation switched off); ``--dataset``/``--root``/``--split`` override them.
Writes ``OUT/metrics.json`` (everything), ``OUT/metrics.csv`` (one row per label, then ``mean``),
``OUT/predictions.csv`` (id, probability and label of every class) and, where the dataset has
masks and ``--method`` is not ``none``, ``OUT/agreement.csv``; prints readable tables. With
``--marks`` (default on for datasets with burned-in marks, such as BUSI), also the share of the
labelled classes' maps on the bright thin marks of the images (:mod:`sibnet.evaluation.marks`).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path

from ..config import BN_STATS
from ..errors import SibnetError
from ..saliency import describe
from .arguments import add_checkpoint_data, add_saliency_options, saliency_options


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate", help="AUROC/AUPRC with bootstrap intervals and saliency agreement of a checkpoint",
        description="Evaluate a trained checkpoint on a dataset split: AUROC and AUPRC per label and their "
        "mean with bootstrap 95% intervals, and, where the dataset has expert masks, the agreement of the "
        "saliency maps with them (Dice, HD95 in pixels, SSIM after convex-hull binarisation of each map at "
        "its Otsu threshold); with a saliency method, also how alike the class maps of each image are (mean "
        "pairwise cosine of the maps and of their embeddings, L_CD). Dataset settings default to those the "
        "checkpoint was trained with. Writes OUT/metrics.json, OUT/metrics.csv, OUT/predictions.csv and "
        "OUT/agreement.csv.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
        "  sibnet evaluate --checkpoint runs/sibnet/best.pt\n"
        "  sibnet evaluate --checkpoint runs/nih/best.pt --root ../shared/data/nih-cxr14 --split test --method none")
    add_checkpoint_data(p, "test", "split to evaluate")
    p.add_argument("--method", default="deep_taylor",
                   help="saliency method for the agreement and the class distinctiveness (default deep_taylor; "
                        "'none' skips both)")
    add_saliency_options(p)
    p.add_argument("--max-maps", type=int, default=None, metavar="N",
                   help="compute saliency maps for the first N images only (default all)")
    p.add_argument("--embed-size", default=None, metavar="N",
                   help="resolution (pixels, or 'full') at which the class distinctiveness embeds the maps "
                        "(default: the checkpoint's loss.embed_size, else 32)")
    p.add_argument("--marks", action=argparse.BooleanOptionalAction, default=None,
                   help="report the share of the saliency on burned-in marks (bright thin text and calipers; "
                        "default: on for datasets that carry them, e.g. busi)")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default 32)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N")
    p.add_argument("--bn-stats", choices=BN_STATS, default="stored",
                   help="BatchNorm statistics: stored (the running averages training left, default) or train "
                        "(re-estimated with the checkpoint's weights on its own training split first)")
    p.add_argument("--out", default=None, help="output folder (default: CKPT's folder/eval-SPLIT)")
    p.set_defaults(func=run)


def dataset_for_checkpoint(meta: dict, config: dict, *, name=None, root=None, split="test"):
    """Build the evaluation dataset from the checkpoint's training settings and the overrides."""
    from ..config import data_seed
    from ..data.registry import build_dataset

    data = dict(config.get("data") or {})
    same = name is None or name == data.get("name", meta.get("dataset"))
    name = name or data.get("name") or meta.get("dataset")
    if not name:
        raise SibnetError("the checkpoint does not name its dataset: pass --dataset (and --root)")
    options = dict(data.get("options") or {}) if same else {}
    options.pop("augment", None)
    root = root if root is not None else (data.get("root") if same else None)
    seed = data_seed(config)  # as training drew the splits
    fold = data.get("fold") if same else None  # a fold's 'val' is part of the training pool
    ds = build_dataset(name, root=root, split=split, image_size=int(meta["image_size"]), seed=seed, fold=fold,
                       folds=int(data.get("folds") or 5), held_out_test=bool(same and data.get("held_out_test")),
                       **options)
    info = getattr(ds, "info", None)
    if info is not None and list(info.class_names) != list(meta["class_names"]):
        raise SibnetError(f"dataset {name!r} has classes {list(info.class_names)} but the checkpoint was trained "
                          f"on {list(meta['class_names'])}")
    return ds, name


def _write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({k: "" if v is None else v for k, v in r.items()})


def _num(v, digits=3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return f"{v:.{digits}f}"


def classification_table(cls: dict) -> str:
    from ..evaluation.classification import to_rows

    lines = [f"{'label':<22} {'AUROC':>7} {'95% CI':>15} {'AUPRC':>7} {'95% CI':>15} {'n':>6} {'pos':>5}"]
    for r in to_rows(cls):
        auroc_ci, auprc_ci = (_num(r[f"{m}_lo"]) + "-" + _num(r[f"{m}_hi"]) for m in ("auroc", "auprc"))
        lines.append(f"{r['label'][:22]:<22} {_num(r['auroc']):>7} {auroc_ci:>15} "
                     f"{_num(r['auprc']):>7} {auprc_ci:>15} {r['n']:>6} {r['n_pos']:>5}")
    return "\n".join(lines)


def agreement_table(agreement: dict) -> str:
    from ..evaluation.run import agreement_rows

    lines = [f"{'class':<22} {'Dice':>6} {'HD95 px':>8} {'SSIM':>6} {'pairs':>6} {'empty':>6}"]
    for r in agreement_rows(agreement):
        lines.append(f"{r['class'][:22]:<22} {_num(r['dice']):>6} {_num(r['hd95'], 1):>8} {_num(r['ssim']):>6} "
                     f"{r['n_pairs']:>6} {r['n_empty_maps']:>6}")
    return "\n".join(lines)


def write_outputs(out: Path, result: dict, header: dict) -> dict:
    """metrics.json, metrics.csv, predictions.csv, agreement.csv; returns the JSON dict."""
    from ..evaluation.classification import to_rows
    from ..evaluation.run import agreement_rows

    out.mkdir(parents=True, exist_ok=True)
    pred = result["predictions"]
    names = list(result["classification"]["per_label"])
    agreement = result["agreement"]
    if agreement is not None:
        agreement = {k: v for k, v in agreement.items() if k != "records"}
        agreement["records"] = [{**r, "hd95": r["hd95"] if math.isfinite(r["hd95"]) else None}
                                for r in result["agreement"]["records"]]
    doc = {**header, "classification": result["classification"], "agreement": agreement,
           "distinctiveness": result.get("distinctiveness"), "marks": result.get("marks"),
           "glyph": result.get("glyph"),
           "n_uncertain_labels_masked": result["n_uncertain_masked"]}
    (out / "metrics.json").write_text(json.dumps(doc, indent=2, allow_nan=False))
    _write_csv(out / "metrics.csv", to_rows(result["classification"]))
    rows = []
    for i, id_ in enumerate(pred.ids):
        row = {"id": id_}
        row.update({f"prob:{n}": float(pred.probs[i, j]) for j, n in enumerate(names)})
        row.update({f"label:{n}": float(pred.labels[i, j]) for j, n in enumerate(names)})
        rows.append(row)
    _write_csv(out / "predictions.csv", rows)
    if result["agreement"] is not None:
        _write_csv(out / "agreement.csv", agreement_rows(result["agreement"]))
    return doc


def _embed_size(value, config: dict):
    if value is None:
        loss = config.get("loss") or {}
        return loss["embed_size"] if "embed_size" in loss else 32
    if str(value).lower() in ("full", "none", "null"):
        return None
    try:
        size = int(value)
    except ValueError:
        size = 0
    if size < 8:
        raise SibnetError(f"--embed-size must be an integer >= 8 or 'full', got {value!r}")
    return size


def _check_arguments(args) -> None:
    """Refuse negative counts among the options before anything is read."""
    if args.n_boot < 0:
        raise SibnetError(f"--n-boot must be >= 0, got {args.n_boot}")
    if args.batch_size < 1:
        raise SibnetError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.max_maps is not None and args.max_maps < 0:
        raise SibnetError(f"--max-maps must be >= 0, got {args.max_maps}")


def _saliency_method(args) -> tuple[str | None, dict]:
    """The saliency method (None for ``--method none``) and its options, both checked before any work."""
    method = None if args.method.lower() in ("none", "null", "") else args.method
    options = saliency_options(args.saliency_option, args.contrast)
    if method is not None:
        from ..saliency import check_options, get

        get(method)  # unknown names and options fail before any work
        check_options(method, options)
    return method, options


def _recalibrate(model, meta: dict, config: dict, args) -> str:
    """Re-estimate the BatchNorm statistics on the checkpoint's training split (``--bn-stats train``).

    Returns:
        The note on the statistics for ``metrics.json``, also printed.
    """
    from ..evaluation.batchnorm import recalibrate_batchnorm

    train, train_name = dataset_for_checkpoint(meta, config, root=args.root if args.dataset is None else None,
                                               split="train")
    bs = int((config.get("data") or {}).get("batch_size") or 16)
    n = recalibrate_batchnorm(model, train, batch_size=max(2, bs), seed=args.seed,
                              name=f"the training split of {train_name}")
    bn_note = f"re-estimated on {n} images of {train_name}/train"
    print(f"BatchNorm statistics {bn_note}")
    return bn_note


def _print_distinctiveness(distinct: dict, method: str, options: dict) -> None:
    """The class distinctiveness of the maps: mean pairwise cosine of the maps and of their embeddings."""
    print(f"\nclass distinctiveness of the {describe(method, options)} maps ({distinct['n_images']} images; mean "
          "pairwise cosine over the classes, 1 = alike):")
    print(f"  maps       {_num(distinct['map_cosine']['mean'])} (sd {_num(distinct['map_cosine']['sd'])})")
    print(f"  embeddings {_num(distinct['embedding_cosine']['mean'], 5)} "
          f"(sd {_num(distinct['embedding_cosine']['sd'], 5)}; L_CD, maps embedded at "
          f"{distinct['embed_size'] or 'full'} px)")


def _print_marks(on_marks: dict, method: str) -> None:
    """The share of the maps on burned-in marks, over all maps and per class (``method``: the maps' name)."""
    print(f"\nshare of the {method} maps on burned-in marks (bright thin text and calipers; labelled class, "
          f"{on_marks['n']} maps; a uniform map would have the marks' area):")
    print(f"  all        {_num(on_marks['mean'])} (sd {_num(on_marks['sd'])}); area {_num(on_marks['area_mean'])}, "
          f"enrichment {_num(on_marks['enrichment'], 2)}")
    for name, c in on_marks["per_class"].items():
        print(f"  {name[:10]:<10} {_num(c['mean'])} ({c['n']} maps)")


def _print_glyph(on_glyph: dict, method: str) -> None:
    """The share of the maps inside the synthetic shortcut glyph, the shortcut class's first."""
    print(f"\nshare of the {method} maps inside the shortcut glyph ({on_glyph['n']} images that carry it, whatever "
          f"their labels; a uniform map would have the glyph box's area, {_num(on_glyph['area'])}):")
    width = max(len(n) for n in on_glyph["per_class"])
    print(f"  {on_glyph['shortcut']:<{width}} {_num(on_glyph['mean'])} (sd {_num(on_glyph['sd'])}), the shortcut "
          "class")
    for name, v in on_glyph["per_class"].items():
        if name != on_glyph["shortcut"]:
            print(f"  {name:<{width}} {_num(v)}")


def _print_results(result: dict, method: str | None, options: dict, marks: bool | None) -> None:
    """The tables of an evaluation: classification, then agreement, distinctiveness and marks where computed."""
    print(classification_table(result["classification"]))
    if result["n_uncertain_masked"]:
        print(f"({result['n_uncertain_masked']} uncertain labels left out of AUROC/AUPRC)")
    if result["agreement"] is not None:
        print(f"\nsaliency agreement ({describe(method, options)}, convex hull at Otsu threshold; mean over pairs "
              "with label 1 and a nonempty mask):")
        print(agreement_table(result["agreement"]))
    elif method is not None:
        print("\n(no expert masks in this dataset: no saliency agreement)")
    if result.get("distinctiveness") is not None:
        _print_distinctiveness(result["distinctiveness"], method, options)
    if result.get("marks") is not None:
        _print_marks(result["marks"], describe(method, options))
    elif marks and method is None:
        print("\n(--marks needs a saliency method)")
    if result.get("glyph") is not None:
        _print_glyph(result["glyph"], describe(method, options))


def loss_maps_note(config: dict, method: str | None, options: dict) -> str | None:
    """A one-line note when the maps evaluated are not those the checkpoint's SIBNet loss trained on (e.g.
    plain DeepTaylor maps of a model trained on its CLRP maps), naming the flags that evaluate those."""
    loss = config.get("loss") or {}
    trained = loss.get("saliency")
    if not trained or method is None:
        return None
    from ..losses.sibnet_loss import with_contrast

    try:
        own = with_contrast(trained, dict(loss.get("saliency_options") or {}), str(loss.get("contrast", "auto")))
    except SibnetError:
        return None
    if trained == method and own == options:
        return None
    flags = " ".join([f"--method {trained}"] + [f"--contrast {v}" if k == "contrast" else f"--saliency-option {k}={v}"
                                                for k, v in sorted(own.items())])
    return (f"note: the checkpoint's SIBNet loss trained on {describe(trained, own)} maps; these are other "
            f"maps ({flags} evaluates those)")


def run(args) -> int:
    from ..evaluation.run import evaluate
    from ..training.checkpoint import load_checkpoint, load_model_from_checkpoint

    _check_arguments(args)
    method, options = _saliency_method(args)
    ckpt_path = Path(args.checkpoint)
    model, meta = load_model_from_checkpoint(ckpt_path, map_location=args.device)
    config = load_checkpoint(ckpt_path).get("config") or {}
    dataset, name = dataset_for_checkpoint(meta, config, name=args.dataset, root=args.root, split=args.split)
    embed_size = _embed_size(args.embed_size, config)
    bn_note = _recalibrate(model, meta, config, args) if args.bn_stats == "train" else "stored"
    result = evaluate(model, dataset, task=meta["task"], class_names=meta["class_names"], method=method,
                      n_boot=args.n_boot, seed=args.seed, max_maps=args.max_maps, batch_size=args.batch_size,
                      device=args.device, embed_size=embed_size, marks=args.marks, saliency_options=options)
    out = Path(args.out) if args.out else ckpt_path.parent / f"eval-{args.split}"
    header = {"checkpoint": str(ckpt_path), "dataset": name, "split": args.split, "n_images": len(dataset),
              "image_size": int(meta["image_size"]), "model": meta["model_name"], "method": method,
              "saliency_options": options,
              "bn_stats": bn_note}
    write_outputs(out, result, header)
    print(f"{name}/{args.split}: {len(dataset)} images, {meta['model_name']} from {ckpt_path}")
    _print_results(result, method, options, args.marks)
    note = loss_maps_note(config, method, options)
    if note:
        print(f"\n{note}")
    print(f"\nwritten: {out}/metrics.json, metrics.csv, predictions.csv"
          + (", agreement.csv" if result["agreement"] is not None else ""))
    return 0
