"""``sibnet demo``: train a baseline and a SIBNet DenseNet-121 on synthetic data and write report.html."""

from __future__ import annotations

import argparse

from ..errors import SibnetError


def register(subparsers) -> None:
    from ..report.demo import QUICK, DemoPlan

    d = DemoPlan()
    p = subparsers.add_parser(
        "demo", help="baseline vs SIBNet on synthetic chest radiographs, one self-contained report.html",
        description="Train a baseline DenseNet-121 (weighted BCE) and a SIBNet DenseNet-121 (weighted BCE + "
        "class distinctiveness + spatial coherence of its saliency maps) on the same synthetic chest "
        "radiographs with the same seed, evaluate both on the test split (AUROC/AUPRC with bootstrap 95% "
        "intervals, agreement of the saliency maps with the expert masks) and write OUT/report.html with "
        f"the tables, training curves and saliency overlays beside the masks. Default: {d.image_size} px, "
        f"{d.n_train}/{d.n_val}/{d.n_test} train/val/test images, {d.epochs} epochs, {d.method} (about 2 minutes "
        f"on an idle 2-core CPU). --quick: {QUICK.image_size} px, {QUICK.n_train}/{QUICK.n_val}/{QUICK.n_test} images, "
        f"{QUICK.epochs} epoch (a smoke test of the whole path, under a minute).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  sibnet demo\n  sibnet demo --out demo --epochs 5\n  sibnet demo --quick --out /tmp/demo")
    p.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    p.add_argument("--epochs", type=int, default=None, help=f"epochs per model (default {d.epochs})")
    p.add_argument("--quick", action="store_true", help="tiny sizes: checks the whole path in under a minute")
    p.add_argument("--image-size", type=int, default=None, help=f"square image size (default {d.image_size})")
    p.add_argument("--n-train", type=int, default=None, help=f"training images (default {d.n_train})")
    p.add_argument("--method", default=None,
                   help=f"saliency method of the SIBNet loss and of the maps (default {d.method})")
    p.add_argument("--seed", type=int, default=None, help=f"seed of data and training (default {d.seed})")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..report.demo import plan_for, run_demo
    from ..saliency import get

    for flag, value, low in (("--epochs", args.epochs, 1), ("--image-size", args.image_size, 32),
                             ("--n-train", args.n_train, 8)):
        if value is not None and value < low:
            raise SibnetError(f"{flag} must be at least {low}, got {value}")
    if args.method is not None:
        get(args.method)
    plan = plan_for(args.quick, epochs=args.epochs, image_size=args.image_size, n_train=args.n_train,
                    method=args.method, seed=args.seed)
    result = run_demo(args.out, plan, progress=not args.no_progress)
    print(f"\nreport: {result['report']}  ({result['seconds']:.0f} s)")
    return 0
