"""``sibnet data summary|check DATASET --root PATH``: what a dataset holds, and whether it is sound.

``summary`` prints the number of images (and patients) per split and per label and, with
``--grid out.png``, draws sample images with their mask contours. ``check`` decodes every image and
mask of every split, applies every validation rule (missing, unreadable or truncated image, unknown
label value, missing column, empty split, mask/image size mismatch, duplicate patient across
splits), and exits 1 listing each problem with its file or row, 0 with "no problems" otherwise.
Both print the loader's notes (``info.extra["notes"]``, e.g. BUSI's near-duplicate groups whose
images carry different labels).
Loader options are given as ``--option KEY=VALUE`` (the value is read as YAML: ``label_set=chexpert5``,
``labels=[Edema]``).
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import yaml

from ..errors import ConfigError, DataError

DATASETS = ("synthetic", "synthetic-glands", "chexpert", "nih", "glas", "busi", "medmnist", "csv")
OFFICIAL_SPLITS = {"chexpert": ("train", "valid"), "nih": ("train", "test"), "glas": ("train", "testA", "testB"),
                   "busi": ("train",),
                   "medmnist": ("train", "val", "test"), "csv": ("train", "val", "test"),
                   "synthetic": ("train", "val", "test"), "synthetic-glands": ("train", "val", "test")}
NO_SPLIT_COLUMN = "needs a 'split' column"  # a CSV without one has only the training split
REQUIRED = {"train"}  # an empty training split is a problem; other empty official splits are notes


def _options(pairs) -> dict:
    out = {}
    for p in pairs or ():
        key, sep, value = p.partition("=")
        if not sep or not key:
            raise ConfigError(f"--option must be KEY=VALUE, got {p!r}")
        out[key.strip()] = yaml.safe_load(value)
    return out


def _build(args, split, **extra):
    from ..data import build_dataset

    opts = {**_options(args.option), **extra}
    return build_dataset(args.dataset, root=args.root, split=split, image_size=args.image_size, **opts)


def _splits(args) -> list[str]:
    return [args.split] if args.split else list(OFFICIAL_SPLITS[args.dataset])


def _label_counts(ds) -> dict[str, int]:
    labels = getattr(ds, "labels", None)
    if labels is None:
        labels = np.stack([np.asarray(ds[i]["label"]) for i in range(len(ds))])
    labels = np.asarray(labels)
    return {c: int(np.sum(labels[:, j] == 1)) for j, c in enumerate(ds.info.class_names)}


def summary(args) -> int:
    shown = None
    print(f"{args.dataset} at {args.root}")
    for split in _splits(args):
        try:
            ds = _build(args, split)
        except DataError as exc:
            if NO_SPLIT_COLUMN in str(exc) and not args.split:
                continue
            if "has no images" in str(exc):
                print(f"  {split}: 0 images")
                continue
            raise
        shown = shown or ds
        counts = _label_counts(ds)
        groups = ds.info.extra.get("patient_groups", "patients")  # what the dataset's patient column holds
        print(f"  {split}: {len(ds)} images, {len(set(ds.patients))} {groups}")
        for name, n in counts.items():
            print(f"    {name:<28} {n:>7}")
        for note in ds.info.extra.get("notes", ()):
            print(f"  note: {note}")
    if shown is None:
        raise DataError(f"{args.root}: no split of {args.dataset!r} has images")
    if args.grid:
        from ..data.grid import draw_grid

        draw_grid(shown, args.grid, n=args.samples, seed=args.seed)
        print(f"grid of {min(args.samples, len(shown))} images written to {args.grid}")
    return 0


def check(args) -> int:
    from torch.utils.data import DataLoader, Dataset

    class Decode(Dataset):
        def __init__(self, ds):
            self.ds = ds

        def __len__(self):
            return len(self.ds)

        def __getitem__(self, i):
            try:
                self.ds[i]
                return None
            except DataError as exc:
                return str(exc)

    from tqdm import tqdm

    problems, notes = [], []
    for split in _splits(args):
        extra = {"missing": "skip"} if args.dataset in ("csv", "chexpert") else {}
        try:
            ds = _build(args, split, **extra)
        except DataError as exc:
            if NO_SPLIT_COLUMN in str(exc) and not args.split:
                continue
            msg = f"{split}: {exc}"
            if "has no images" in str(exc) and split not in REQUIRED and not args.split:
                notes.append(msg)
            else:
                problems.append(msg)
            continue
        problems += [f"{split}: {m}" for m in getattr(ds, "skipped", [])]
        notes += [f"{split}: {note}" for note in ds.info.extra.get("notes", ())]
        rows = getattr(ds, "info").extra.get("rows_without_image")
        if rows:
            notes.append(f"{split}: {rows} label rows have no image in the folder (not used)")
        loader = DataLoader(Decode(ds), batch_size=None, num_workers=args.workers, collate_fn=lambda x: x)
        for err in tqdm(loader, total=len(ds), desc=f"checking {split}", unit="img", file=sys.stderr,
                        disable=args.quiet or not sys.stderr.isatty()):
            if err:
                problems.append(f"{split}: {err}")
    for n in notes:
        print(f"note: {n}")
    if problems:
        print(f"{len(problems)} problem(s):")
        for p in problems:
            print(f"  {p}")
        return 1
    print("no problems")
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("data", help="summarise or check a dataset",
                                   description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    for name, func, text in (("summary", summary, "images per split and label, and a sample grid"),
                             ("check", check, "decode every image and mask and apply every validation rule")):
        p = sub.add_parser(name, help=text, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        p.add_argument("dataset", choices=DATASETS)
        p.add_argument("--root", default=None, help="the dataset's folder or file")
        p.add_argument("--split", default=None, help="only this split (default: every official split)")
        p.add_argument("--option", action="append", metavar="KEY=VALUE", help="a loader option (repeatable)")
        p.add_argument("--image-size", type=int, default=128 if name == "summary" else 64,
                       help="size images are loaded at")
        if name == "summary":
            p.add_argument("--grid", default=None, metavar="PNG", help="draw sample images with mask contours here")
            p.add_argument("--samples", type=int, default=16, help="images in the grid")
            p.add_argument("--seed", type=int, default=0, help="which images the grid shows")
        else:
            p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes for decoding")
            p.add_argument("--quiet", action="store_true", help="no progress bar")
        p.set_defaults(func=func)
