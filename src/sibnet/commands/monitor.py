"""``sibnet monitor fit|check|study``: flag images a deployed classifier should not be trusted on.

* ``fit --checkpoint CKPT --out profile.json``: a reference profile from in-distribution images
  (default the checkpoint's own dataset, ``--split val``), see :mod:`sibnet.monitor`.
* ``check --profile P (--dataset NAME [--root R] [--split S] [KEY=VALUE ...] | --images DIR) --out DIR``:
  scores every image, tests batches of ``--batch-size`` consecutive images against the reference
  and writes ``DIR/scores.csv`` (per image), ``DIR/alarms.json`` (per batch and overall) and
  ``DIR/report.html`` (self-contained). Image files are read like ``sibnet explain`` does
  (converted to the model's channels, resized to its image size); dataset images come from the
  registry at the profile's image size unless ``image_size=N`` is given.
* ``study --model KIND=CKPT ... --out DIR``: how well every score detects shifted test sets and
  predicts failures (:mod:`sibnet.monitor.study`); Markdown and CSV tables.

All inputs are read and checked before anything is written; outputs are written to temporary
names and renamed into place, so a failed command leaves no half-written file. Nothing is ever
written inside the dataset or image folder.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from torch.utils.data import Dataset

from ..errors import ConfigError, SibnetError
from ..files import atomic_write_text
from .arguments import add_checkpoint_data

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm", ".dicom"}


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "monitor", help="flag images a trained classifier should not be trusted on (reference profile, alarms)",
        description="Monitor a trained classifier on new, unlabeled images: fit a reference profile of its "
        "scores on in-distribution images (class distinctiveness and spatial coherence of its saliency maps, "
        "maximum class probability, energy, Mahalanobis distance of its features), then score new images with "
        "conformal p-values and test batches of them against the reference at a chosen false-alarm rate.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
        "  sibnet monitor fit --checkpoint runs/sibnet/best.pt --out runs/sibnet/profile.json\n"
        "  sibnet monitor check --profile runs/sibnet/profile.json --dataset synthetic --split test --out checks/test\n"
        "  sibnet monitor check --profile runs/sibnet/profile.json --images new_scans/ --out checks/new\n"
        "  sibnet monitor study --model baseline=runs/b/best.pt --model sibnet=runs/s/best.pt --out results/")
    sub = p.add_subparsers(dest="action", metavar="ACTION")
    _add_fit_parser(sub)
    _add_check_parser(sub)
    _add_study_parser(sub)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def _add_fit_parser(sub) -> None:
    """``sibnet monitor fit`` and its options."""
    from ..monitor import DEFAULT_METHOD, SCORES

    f = sub.add_parser("fit", help="fit a reference profile on in-distribution images",
                       description="Score the in-distribution images (default: the checkpoint's dataset, split "
                       "val) and store the reference profile as JSON (checkpoint fingerprint, saliency method, "
                       "image size and channels, reference scores).")
    add_checkpoint_data(f, "val", "split of in-distribution images")
    f.add_argument("--method", default=DEFAULT_METHOD, help=f"saliency method (default {DEFAULT_METHOD})")
    f.add_argument("--score", default=None, choices=SCORES, help="score of the batch verdicts (default: "
                   "the package's DEFAULT_SCORE)")
    f.add_argument("--max-images", type=int, default=None, metavar="N", help="use the first N images only")
    f.add_argument("--batch-size", type=int, default=32, help="images per pass (default 32)")
    f.add_argument("--seed", type=int, default=0, help="seed of the fit/calibration split (default 0)")
    f.add_argument("--device", default="auto", help="auto (CUDA when present, default), cpu, cuda, cuda:N")
    f.add_argument("--out", required=True, metavar="PROFILE.json", help="profile file to write")
    f.set_defaults(func=run_fit)


def _add_check_parser(sub) -> None:
    """``sibnet monitor check`` and its options."""
    from ..monitor import SCORES

    c = sub.add_parser("check", help="score new images against a profile and raise batch alarms",
                       description="Score new images against a reference profile: per-image scores and conformal "
                       "p-values (scores.csv), a Mann-Whitney test of each batch of --batch-size consecutive images "
                       "(alarms.json) and report.html.")
    c.add_argument("--profile", required=True, help="profile written by sibnet monitor fit")
    c.add_argument("--checkpoint", default=None, help="the model (default: the checkpoint the profile names)")
    c.add_argument("--dataset", default=None, help="dataset name of the new images (default: the checkpoint's, "
                   "with its options)")
    c.add_argument("--root", default=None, help="dataset folder (file-based datasets)")
    c.add_argument("--split", default="test", help="dataset split (default test)")
    c.add_argument("--images", default=None, metavar="DIR", help="a folder of image files instead of a dataset")
    c.add_argument("--alpha", type=float, default=0.05, help="false-alarm rate (default 0.05)")
    c.add_argument("--score", default=None, choices=SCORES, help="score of the verdicts (default the profile's)")
    c.add_argument("--batch-size", type=int, default=16, help="images per tested batch (default 16)")
    c.add_argument("--max-images", type=int, default=None, metavar="N", help="the first N images only")
    c.add_argument("--top", type=int, default=6, help="most suspicious images shown in the report (default 6)")
    c.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N")
    c.add_argument("--out", required=True, help="output folder")
    c.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="dataset options (YAML values), e.g. difficulty=0.9 or image_size=64")
    c.set_defaults(func=run_check)


def _add_study_parser(sub) -> None:
    """``sibnet monitor study`` and its options."""
    from ..monitor import DEFAULT_METHOD

    s = sub.add_parser("study", help="detection of shifted test sets and failure prediction by every score",
                       description="For each model: fit a profile on its validation split, score its clean test "
                       "split and shifted versions, and report per-image AUROC, batch detection rates and failure "
                       "prediction for every score; means and 95%% intervals over the models of a kind.")
    s.add_argument("--model", action="append", default=[], metavar="KIND=CKPT",
                   help="a model and its kind (e.g. baseline=runs/b0/last.pt); repeatable")
    s.add_argument("--shift", action="append", default=None, metavar="KIND:VALUE",
                   help="noise:S, blur:S, contrast:F, gamma:G (on the test images), marker:flipped and "
                        "difficulty:D (synthetic), dataset:NAME (with --other-root NAME=PATH); repeatable")
    s.add_argument("--other-root", action="append", default=[], metavar="NAME=PATH", help="root of another dataset")
    s.add_argument("--n-shifted", type=int, default=160, help="images per shifted set (default 160)")
    s.add_argument("--n-clean", type=int, default=None, help="clean test images (default all)")
    s.add_argument("--method", default=DEFAULT_METHOD, help=f"saliency method (default {DEFAULT_METHOD})")
    s.add_argument("--alpha", type=float, default=0.05, help="false-alarm rate (default 0.05)")
    s.add_argument("--n-batches", type=int, default=200, help="random batches per rate (default 200)")
    s.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N")
    s.add_argument("--out", required=True, help="folder of the tables (and monitor.json, every number)")
    s.add_argument("--report-only", action="store_true", help="rewrite the tables from OUT/monitor.json")
    s.set_defaults(func=run_study)


# ------------------------------------------------------------------ shared helpers
def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def _progress(total: int, desc: str):
    """A tqdm bar on stderr when it is a terminal, else None."""
    if not sys.stderr.isatty():
        return None, lambda: None
    from tqdm import tqdm

    bar = tqdm(total=total, desc=desc, unit="img", file=sys.stderr)
    return bar.update, bar.close


def _load(checkpoint, device):
    from ..training.checkpoint import load_checkpoint, load_model_from_checkpoint

    model, meta = load_model_from_checkpoint(checkpoint, map_location=device)
    config = load_checkpoint(checkpoint).get("config") or {}
    return model, meta, config


def _limit(dataset, n):
    from torch.utils.data import Subset

    if n is None or n >= len(dataset):
        return dataset
    if n < 1:
        raise SibnetError(f"--max-images must be >= 1, got {n}")
    part = Subset(dataset, range(n))
    part.info = getattr(dataset, "info", None)
    return part


def _write_files(files: dict[Path, str]) -> None:
    """Write every file atomically (:func:`sibnet.files.atomic_write_text`)."""
    for path, text in files.items():
        atomic_write_text(path, text, what="output")


def _inside(path: Path, folder) -> bool:
    if folder is None:
        return False
    try:
        path.resolve().relative_to(Path(folder).resolve())
        return True
    except ValueError:
        return False


# ------------------------------------------------------------------ fit
def run_fit(args) -> int:
    from ..monitor import DEFAULT_SCORE, fit
    from ..monitor.profile import file_sha256
    from .evaluate import dataset_for_checkpoint

    out = Path(args.out)
    if out.suffix.lower() != ".json":
        raise SibnetError(f"--out {out}: the profile is a .json file")
    if args.batch_size < 1:
        raise SibnetError(f"--batch-size must be >= 1, got {args.batch_size}")
    device = _device(args.device)
    model, meta, config = _load(args.checkpoint, device)
    dataset, name = dataset_for_checkpoint(meta, config, name=args.dataset, root=args.root, split=args.split)
    if _inside(out, getattr(dataset, "root", None) or args.root):
        raise SibnetError(f"--out {out}: will not write inside the dataset folder")
    dataset = _limit(dataset, args.max_images)
    if len(dataset) < 4:
        raise SibnetError(f"{name}/{args.split}: {len(dataset)} images; a profile needs at least 4")
    update, close = _progress(len(dataset), "fit")
    try:
        profile = fit(model, dataset, method=args.method, task=meta["task"], class_names=meta["class_names"],
                      score=args.score or DEFAULT_SCORE, batch_size=args.batch_size, seed=args.seed,
                      source={"checkpoint": str(args.checkpoint), "checkpoint_sha256": file_sha256(args.checkpoint),
                              "dataset": name, "split": args.split, "n_images": len(dataset)},
                      progress=update)
    finally:
        close()
    profile.save(out)
    ref = profile.reference
    print(f"profile of {args.checkpoint} on {name}/{args.split}: {profile.n_fit} images fit the estimates, "
          f"{profile.n_calibration} calibrate; {profile.method} maps, {profile.channels}x"
          f"{profile.image_size[0]}x{profile.image_size[1]} images; verdict score {profile.score}")
    for k, v in ref.items():
        print(f"  {k:<12} reference median {float(__import__('numpy').median(v)):.4g}")
    print(f"written: {out}")
    return 0


# ------------------------------------------------------------------ check
class ImageFolder(Dataset):
    """Image files of a folder, read like ``sibnet explain`` (all read up front, errors name the file)."""

    def __init__(self, folder, meta: dict):
        import torch

        from .explain import load_input

        folder = Path(folder)
        if not folder.is_dir():
            raise SibnetError(f"--images {folder}: folder not found")
        paths = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not paths:
            raise SibnetError(f"--images {folder}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
        shown, inputs = zip(*(load_input(p, meta) for p in paths))
        self.shown, self.inputs = torch.stack(shown), torch.stack(inputs)
        self.ids = [p.name for p in paths]
        self.root = folder

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"image": self.inputs[i], "id": self.ids[i]}


def _parse_overrides(items) -> dict:
    import yaml

    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SibnetError(f"dataset option {item!r}: expected KEY=VALUE")
        try:
            out[key] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise SibnetError(f"dataset option {item!r}: the value is not valid YAML") from None
    return out


def new_dataset(meta: dict, config: dict, profile, *, name, root, split, overrides: dict):
    """The dataset to check: the checkpoint's settings where it is the same dataset, then the overrides."""
    from ..data.registry import build_dataset

    data = dict(config.get("data") or {})
    own = data.get("name") or meta.get("dataset")
    name = name or own
    if not name:
        raise SibnetError("the checkpoint does not name its dataset: pass --dataset (and --root) or --images")
    same = name == own
    options = dict(data.get("options") or {}) if same else {}
    options.pop("augment", None)
    options.update(overrides)
    size = options.pop("image_size", None)
    size = int(profile.image_size[0]) if size is None else size
    root = root if root is not None else (data.get("root") if same else None)
    seed = options.pop("seed", int((config.get("train") or {}).get("seed", 0)))
    ds = build_dataset(name, root=root, split=split, image_size=size, seed=seed, **options)
    if len(ds) == 0:
        raise SibnetError(f"{name}/{split}: no images")
    return ds, f"{name}/{split}" + ("".join(f" {k}={v}" for k, v in overrides.items()) if overrides else "")


def _batch_rows(scores, p, ids, primary, alpha, batch_size, class_names, probs):
    from ..monitor import SCORES

    rows = []
    for i, id_ in enumerate(ids):
        row = {"id": id_ if id_ is not None else str(i), "batch": i // batch_size,
               "flagged": bool(p[primary][i] <= alpha)}
        row.update({k: float(scores[k][i]) for k in SCORES})
        row.update({f"p:{k}": float(p[k][i]) for k in SCORES})
        row.update({f"prob:{c}": float(probs[i, j]) for j, c in enumerate(class_names)})
        rows.append(row)
    return rows


def _csv_text(rows) -> str:
    import csv
    import io

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def _check_arguments(args) -> None:
    """Refuse ``sibnet monitor check`` options that cannot work together, before anything is read."""
    if not 0 < args.alpha < 1:
        raise SibnetError(f"--alpha must be in (0, 1), got {args.alpha}")
    if args.batch_size < 2:
        raise SibnetError(f"--batch-size must be >= 2, got {args.batch_size}")
    if args.images is not None and (args.dataset or args.root or args.overrides):
        raise SibnetError("give either --images DIR or --dataset/--root/KEY=VALUE, not both")


def _images_to_check(args, meta: dict, config: dict, profile, out: Path):
    """The images ``sibnet monitor check`` scores: the ``--images`` folder or a dataset, first ``--max-images``.

    Returns:
        The dataset and the words that name it in the output.

    Raises:
        SibnetError: When ``out`` lies inside the image or dataset folder.
    """
    if args.images is not None:
        data = ImageFolder(args.images, meta)
        what, folder = f"the folder {args.images}", args.images
    else:
        data, what = new_dataset(meta, config, profile, name=args.dataset, root=args.root, split=args.split,
                                 overrides=_parse_overrides(args.overrides))
        folder = getattr(data, "root", None) if args.dataset is not None or args.root is not None else None
    if _inside(out, folder) or _inside(out, args.root):
        raise SibnetError(f"--out {out}: will not write inside the dataset folder")
    return _limit(data, args.max_images), what


def _batch_verdicts(profile, scores: dict, ids: list, alpha: float, batch_size: int, primary: str) -> list[dict]:
    """The batch test of each run of ``batch_size`` consecutive images (the last run may be shorter)."""
    from ..monitor import SCORES, check

    n = len(ids)
    batches = []
    for b, start in enumerate(range(0, n, batch_size)):
        sl = slice(start, min(n, start + batch_size))
        v = check(profile, {k: scores[k][sl] for k in SCORES}, alpha=alpha, score_name=primary)
        batches.append({"batch": b, "first": ids[sl.start] or str(sl.start),
                        "last": ids[sl.stop - 1] or str(sl.stop - 1), "n": sl.stop - sl.start,
                        "p_value": v["p_value"], "alarm": v["alarm"],
                        "p_values": {k: v["per_score"][k]["p_value"] for k in SCORES}})
    return batches


def _top_figures(model, profile, data, scores: dict, p: dict, probs, rows: list[dict], *, class_names, primary: str,
                 top: int, device) -> list:
    """Figures of the ``top`` most suspicious images (lowest p-value, then highest score) with their class maps."""
    import numpy as np

    from ..report.figures import explain_figure
    from ..report.html import Figure, figure_png
    from ..saliency import get as get_saliency

    figures = []
    method = get_saliency(profile.method)
    for i in np.lexsort((-scores[primary], p[primary]))[:max(0, top)]:
        item = data[int(i)]
        x = item["image"][None].to(device).float()
        maps = method(model.eval(), x, **profile.options)[0].detach().float().cpu().numpy()
        shown = data.shown[int(i)] if isinstance(data, ImageFolder) else item["image"]
        fig = explain_figure(np.asarray(shown), maps, class_names, probs[i],
                             title=f"{rows[i]['id']}: {primary} p = {p[primary][i]:.3f}", method=profile.method)
        figures.append(Figure(figure_png(fig), caption=f"{rows[i]['id']} (batch {rows[i]['batch']})"))
    return figures


def _print_check(what: str, summary: dict, out: Path) -> None:
    """The few lines ``sibnet monitor check`` prints once its files are written."""
    n, overall = summary["n_images"], summary["overall"]
    print(f"{what}: {n} images; {summary['score']} score, alpha {summary['alpha']}, "
          f"batches of {summary['batch_size']}")
    print(f"  alarms: {summary['n_alarms']} of {len(summary['batches'])} batches; all images together p = "
          f"{overall['p_value']:.3g} ({'ALARM' if overall['alarm'] else 'no alarm'})")
    print(f"  images with p <= alpha: {summary['n_flagged']} of {n} ({summary['n_flagged'] / n:.1%})")
    print(f"written: {out}/scores.csv, alarms.json, report.html")


def run_check(args) -> int:
    import torch

    from ..evaluation.run import probabilities
    from ..monitor import SCORES, Profile, check, score
    from ..monitor.report import check_sections
    from ..report.html import render_html

    _check_arguments(args)
    out = Path(args.out)
    profile = Profile.load(args.profile)
    ckpt = args.checkpoint or profile.source.get("checkpoint")
    if not ckpt:
        raise SibnetError(f"{args.profile}: the profile names no checkpoint: pass --checkpoint")
    device = _device(args.device)
    model, meta, config = _load(ckpt, device)
    profile.check_model(model, where=str(ckpt))
    data, what = _images_to_check(args, meta, config, profile, out)
    primary = args.score or profile.score
    update, close = _progress(len(data), "scoring")
    try:
        result = score(model, profile, data, batch_size=max(args.batch_size, 16), progress=update, check_model=False)
    finally:
        close()
    s, p, ids = result["scores"], result["p_values"], result["ids"]
    logits = torch.as_tensor(result["logits"])
    probs = probabilities(logits, meta["task"]).numpy()
    batches = _batch_verdicts(profile, s, ids, args.alpha, args.batch_size, primary)
    overall = check(profile, s, alpha=args.alpha, score_name=primary)
    rows = _batch_rows(s, p, ids, primary, args.alpha, args.batch_size, meta["class_names"], probs)
    summary = {"profile": str(args.profile), "checkpoint": str(ckpt), "data": what, "method": profile.method,
               "score": primary, "alpha": args.alpha, "test": overall["test"], "batch_size": args.batch_size,
               "n_images": len(ids), "n_reference": profile.n_calibration,
               "n_flagged": int(sum(r["flagged"] for r in rows)),
               "n_alarms": int(sum(b["alarm"] for b in batches)), "batches": batches,
               "overall": {"p_value": overall["p_value"], "alarm": overall["alarm"],
                           "per_score": {k: overall["per_score"][k]["p_value"] for k in SCORES}}}
    figures = _top_figures(model, profile, data, s, p, probs, rows, class_names=meta["class_names"],
                           primary=primary, top=args.top, device=device)
    html = render_html(check_sections(summary, rows, profile.reference, s, figures, overall["per_score"]),
                       title="sibnet monitor check")
    _write_files({out / "scores.csv": _csv_text(rows),
                   out / "alarms.json": json.dumps(summary, indent=2, allow_nan=False),
                   out / "report.html": html})
    _print_check(what, summary, out)
    return 0


# ------------------------------------------------------------------ study
def _shifted_sets(specs, meta, config, clean_full, n, other_roots, seed=0):
    from torch.utils.data import Subset

    from ..data.registry import build_dataset
    from ..monitor.shifts import IMAGE_SHIFTS, ShiftedDataset, parse_shift

    data = dict(config.get("data") or {})
    own = data.get("name") or meta.get("dataset")
    options = dict(data.get("options") or {})
    options.pop("augment", None)
    size = int(meta["image_size"])
    sets = {}
    for spec in specs:
        kind, value = parse_shift(spec)
        if kind in IMAGE_SHIFTS:
            try:
                v = float(value)
            except ValueError:
                raise ConfigError(f"shift {spec!r}: the value must be a number") from None
            ds = ShiftedDataset(Subset(clean_full, range(min(n, len(clean_full)))), kind, v, seed=seed)
        elif kind == "marker":
            if own != "synthetic" or not options.get("shortcut"):
                raise ConfigError(f"shift {spec!r}: needs a model trained on synthetic data with a shortcut")
            # the training rule inverted: the glyph present iff the finding is absent (fresh images: seed + 1000)
            ds = build_dataset("synthetic", split="train", image_size=size, seed=1000 + seed,
                               **{**options, "n": n, "shortcut_p": 0.0})
        elif kind == "difficulty":
            if own != "synthetic":
                raise ConfigError(f"shift {spec!r}: needs a model trained on synthetic data")
            ds = build_dataset("synthetic", split="test", image_size=size, seed=seed,
                               **{**options, "n": n, "difficulty": float(value)})
        elif kind == "dataset":
            if value not in other_roots:
                raise ConfigError(f"shift {spec!r}: give --other-root {value}=PATH")
            ds = build_dataset(value, root=other_roots[value], split="all" if value != "synthetic" else "test",
                               image_size=size, seed=seed)
            ds = Subset(ds, range(min(n, len(ds))))
        else:
            raise ConfigError(f"unknown shift {spec!r}; kinds: {', '.join(IMAGE_SHIFTS)}, marker, difficulty, dataset")
        sets[spec] = ds
    return sets


DEFAULT_SHIFTS = ("noise:0.02", "noise:0.1", "blur:1", "blur:2", "contrast:0.5", "gamma:2", "marker:flipped",
                  "difficulty:1")


def _read_study(out: Path) -> dict:
    """The study saved in ``OUT/monitor.json`` (for ``--report-only``)."""
    path = out / "monitor.json"
    if not path.is_file():
        raise SibnetError(f"--report-only: {path} not found (run the study first)")
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise SibnetError(f"{path}: not a readable study ({exc})") from None


def _study_models(items: list[str]) -> list[tuple[str, str]]:
    """``(kind, checkpoint)`` of each ``--model KIND=CKPT``; every checkpoint must exist."""
    if not items:
        raise SibnetError("give at least one --model KIND=CKPT (or --report-only)")
    models = []
    for item in items:
        kind, sep, path = item.partition("=")
        if not sep or not kind or not path:
            raise SibnetError(f"--model {item!r}: expected KIND=CKPT")
        if not Path(path).is_file():
            raise SibnetError(f"--model {item!r}: checkpoint not found")
        models.append((kind, path))
    return models


def _other_roots(items: list[str]) -> dict[str, str]:
    """``{name: path}`` of each ``--other-root NAME=PATH``."""
    other = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep:
            raise SibnetError(f"--other-root {item!r}: expected NAME=PATH")
        other[name] = path
    return other


def run_study(args) -> int:
    import time

    from torch.utils.data import Subset

    from ..experiments.tables import code_version, command_line
    from ..monitor.study import evaluate_model
    from .evaluate import dataset_for_checkpoint

    out = Path(args.out)
    if args.report_only:
        write_study_tables(out, _read_study(out), rewritten_by=command_line())
        return 0
    models = _study_models(args.model)
    other = _other_roots(args.other_root)
    specs = list(args.shift or DEFAULT_SHIFTS)
    device = _device(args.device)
    results = []
    for kind, path in models:
        t0 = time.time()
        model, meta, config = _load(path, device)
        ref, _ = dataset_for_checkpoint(meta, config, split="val")
        clean, name = dataset_for_checkpoint(meta, config, split="test")
        if args.n_clean:
            clean = Subset(clean, range(min(args.n_clean, len(clean))))
        seed = int((config.get("train") or {}).get("seed", 0))
        shifted = _shifted_sets(specs, meta, config, clean, args.n_shifted, other, seed=0)
        r = evaluate_model(model, meta["task"], ref, clean, shifted, method=args.method,
                           class_names=meta["class_names"], alpha=args.alpha, n_batches=args.n_batches, seed=seed,
                           progress=lambda what: print(f"  {kind} {path}: {what} done", file=sys.stderr))
        r.update(kind=kind, checkpoint=path, dataset=name, seconds=time.time() - t0)
        results.append(r)
        print(f"{kind} {path}: done in {time.time() - t0:.0f} s; test error rate {r['error_rate']:.3f}")
    study = {"command": command_line(), "code": code_version(), "method": args.method, "alpha": args.alpha,
             "n_shifted": args.n_shifted, "n_batches": args.n_batches, "shifts": specs, "results": results}
    _write_files({out / "monitor.json": json.dumps(study, indent=1, allow_nan=True)})
    write_study_tables(out, study)
    return 0


def _study_header(study: dict, by_kind: dict, rewritten_by: str | None) -> list[str]:
    """The lines above the study tables: command, code, models and how every number was obtained."""
    counts = ", ".join(f"{k}: {len(v)} model(s)" for k, v in by_kind.items())
    header = [f"command: `{study['command']}`", f"code: {study['code']}"]
    if rewritten_by:
        header.append(f"tables rewritten from monitor.json by `{rewritten_by}`")
    header += [f"models: {counts}",
               f"saliency method {study['method']}; reference = each model's validation split (half fits the "
               f"estimates, half calibrates); clean = its test split; {study['n_shifted']} images per shifted set; "
               f"batch tests: one-sided Mann-Whitney U at alpha {study['alpha']}, {study['n_batches']} random "
               "batches per rate",
               "cells: mean [min, max] over the models of a kind (a single model: its value); differences between "
               "kinds: mean [95% t-interval] over models matched by training seed",
               "scores oriented so that higher = more suspicious: AUROC 0.5 = no signal, below 0.5 = the shift "
               "moves the score the other way"]
    return header


def _cells(rs: list[dict], get, digits: int = 2) -> list[str]:
    """One cell per score: ``get(result, score)`` over the results ``rs`` as mean [min, max]."""
    from ..monitor import SCORES
    from ..monitor.study import fmt_range

    return [fmt_range([get(r, sc) for r in rs], digits) for sc in SCORES]


def _shift_sections(specs: list[str], alpha, by_kind: dict) -> list[tuple]:
    """Per-image AUROC of each shift, then batch detection rates (batches of 16 and 64), one table per kind."""
    from ..monitor import SCORES

    sections = []
    for k, rs in by_kind.items():
        rows = [[spec] + _cells(rs, lambda r, sc: r["auroc"][spec][sc]) for spec in specs]
        sections.append((f"Per-image AUROC, shifted vs clean test images: {k}", ["shift", *SCORES], rows))
    for b in ("16", "64"):
        for k, rs in by_kind.items():
            rows = [["clean (false-alarm rate)"] + _cells(rs, lambda r, sc: r["detection"]["clean"][sc][b])]
            rows += [[spec] + _cells(rs, lambda r, sc: r["detection"][spec][sc][b]) for spec in specs]
            sections.append((f"Batch detection rate at alpha {alpha}, batches of {b}: {k}", ["shift", *SCORES], rows))
    return sections


def _failure_section(by_kind: dict) -> tuple:
    """Failure prediction by every score on the clean test images, rows by kind of model."""
    from ..monitor import SCORES
    from ..monitor.study import fmt_range

    rows = []
    for k, rs in by_kind.items():
        rows.append([k, "AUROC (errors vs correct)"] + _cells(rs, lambda r, sc: r["failure"][sc]["auroc"]))
        rows.append([k, "AURC (lower is better)"] + _cells(rs, lambda r, sc: r["failure"][sc]["aurc"], 3))
        rows.append([k, "error rate / oracle AURC", fmt_range([r["error_rate"] for r in rs], 3),
                     fmt_range([r["failure"]["oracle_aurc"] for r in rs], 3)] + [""] * (len(SCORES) - 2))
    return ("Failure prediction on the clean test images (an error: any label wrong at p = 0.5)",
            ["models", "metric", *SCORES], rows)


def _difference_section(specs: list[str], kinds: list[str], by_kind: dict) -> tuple:
    """Second kind minus first in per-image AUROC and failure AUROC, over models matched by training seed."""
    from ..monitor import SCORES
    from ..monitor.study import fmt_paired

    a, b = by_kind[kinds[1]], by_kind[kinds[0]]
    rows = [[spec] + [fmt_paired([r["auroc"][spec][sc] for r in a], [r["auroc"][spec][sc] for r in b])
                      for sc in SCORES] for spec in specs]
    rows.append(["failure AUROC"] + [fmt_paired([r["failure"][sc]["auroc"] for r in a],
                                                [r["failure"][sc]["auroc"] for r in b]) for sc in SCORES])
    return (f"Difference {kinds[1]} - {kinds[0]} in per-image AUROC (and failure AUROC)", ["shift", *SCORES], rows)


def _study_csv_rows(results: list[dict], specs: list[str]) -> list[dict]:
    """``monitor.csv``: per model and score, one row per shift and one for the clean test images."""
    from ..monitor import SCORES

    csv_rows = []
    for r in results:
        base = {"kind": r["kind"], "checkpoint": r["checkpoint"]}
        for spec in specs:
            for sc in SCORES:
                csv_rows.append({**base, "shift": spec, "score": sc, "auroc": r["auroc"][spec][sc],
                                 "detect16": r["detection"][spec][sc]["16"],
                                 "detect64": r["detection"][spec][sc]["64"]})
        for sc in SCORES:
            csv_rows.append({**base, "shift": "clean", "score": sc, "detect16": r["detection"]["clean"][sc]["16"],
                             "detect64": r["detection"]["clean"][sc]["64"], "failure_auroc": r["failure"][sc]["auroc"],
                             "aurc": r["failure"][sc]["aurc"]})
    return csv_rows


def write_study_tables(out: Path, study: dict, rewritten_by: str | None = None) -> None:
    """``OUT/monitor.md`` and ``OUT/monitor.csv`` from a study (``OUT/monitor.json``)."""
    from ..experiments.tables import write_outputs

    results, specs = study["results"], study["shifts"]
    kinds = list(dict.fromkeys(r["kind"] for r in results))
    by_kind = {k: [r for r in results if r["kind"] == k] for k in kinds}
    sections = _shift_sections(specs, study["alpha"], by_kind)
    sections.append(_failure_section(by_kind))
    if len(kinds) == 2 and len(by_kind[kinds[0]]) == len(by_kind[kinds[1]]):
        sections.append(_difference_section(specs, kinds, by_kind))
    paths = write_outputs(out, "monitor", "Monitor scores: shift detection and failure prediction",
                          _study_header(study, by_kind, rewritten_by), sections,
                          ["kind", "checkpoint", "shift", "score", "auroc", "detect16", "detect64", "failure_auroc",
                           "aurc"], _study_csv_rows(results, specs))
    print(f"written: {paths['markdown']}, {paths['csv']}, {out / 'monitor.json'}")
