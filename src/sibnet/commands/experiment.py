"""``sibnet experiment``: the paper's tables as resumable, reproducible jobs."""

from __future__ import annotations

import argparse
import sys

from ..config import BN_STATS

TABLES = ("table1", "table3", "table4", "table5", "lambda-grid", "capacity", "cases", "status")
TRAINED = ("table1", "lambda-grid", "capacity")  # the tables whose missing jobs are trained (unless --report-only)
REFERENCE_TABLES = ("table1", "table3")  # the tables whose paired differences take --reference
DEFAULT_METHODS = "baseline,se,cbam,sibnet,sibnet-gradcam,sibnet-lrp,no-cd,no-sc,image-embed"
CAPACITY_METHODS = "baseline,sibnet"


DESCRIPTION = (
    "Each method x fold x seed is one training job with its own folder under --runs (config, "
    "checkpoints, metrics); finished jobs (done.json) are never re-run and an interrupted job continues "
    "from its last epoch. table1 trains the missing jobs and writes AUROC/AUPRC per method with paired "
    "differences against the baseline (or --reference); table3 (saliency agreement with expert masks), "
    "table4 (Gaussian noise) and table5 (probes on frozen features) evaluate the finished table1 jobs of the "
    "same study and never train. lambda-grid trains SIBNet over a grid of (lambda_cd, lambda_sc) and draws the "
    "heatmap. capacity trains the --methods (default baseline,sibnet) on DenseNet-121s of about m x the standard "
    "parameter count for each --capacities m and plots validation/evaluation loss and AUROC against m "
    "(Fig. 12). cases draws every method's maps of the same evaluation images beside the expert masks (one "
    "figure per case, from the finished jobs of one fold and seed). 'status' lists the jobs. Tables are "
    "written to --out as Markdown and CSV beside "
    "their figures, with a header stating the command, data, budget and code version.")
EXAMPLES = (
    "  sibnet experiment table1 --dataset synthetic --methods baseline,sibnet --folds 2 --budget epochs=2\n"
    "  sibnet experiment table1 --dataset nih --root ../shared/data/nih-cxr14 --folds 5 --seeds 1 "
    "--budget epochs=5 --jobs 2\n"
    "  sibnet experiment table4 --dataset nih --root ../shared/data/nih-cxr14 --folds 5 --budget epochs=5\n"
    "  sibnet experiment capacity --dataset synthetic --image-size 64 --folds 2 --budget epochs=3 "
    "--methods baseline,sibnet-gradcam --capacities 0.2,0.5,1,2\n"
    "  sibnet experiment status --dataset nih --root ../shared/data/nih-cxr14 --budget epochs=5")


def register(subparsers) -> None:
    from ..experiments.methods import METHODS

    method_list = "".join("\n  " + f"{m.name}: {m.description}" + ("" if m.implemented else " [not implemented]")
                          for m in METHODS.values())
    method_list += ("\n  <method>-lambda-<l1>-<l2>: a SIBNet method with lambda_cd=l1, lambda_sc=l2 (sibnet-lambda-"
                    "<l1>-<l2>: DeepTaylor)"
                    "\n  warm-baseline-lr<x>, warm-sibnet-lr<x>: the warm-started method fine-tuning with Adam's "
                    "learning rate x (e.g. warm-sibnet-lr0.0001)"
                    "\n  capacity-<method>-<m>: the method on a DenseNet-121 of about m x the parameters")
    p = subparsers.add_parser(
        "experiment", help="run the paper's tables (cross-validated methods, ablations, noise, probes, agreement)",
        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="methods:" + method_list + "\n\nexamples:\n" + EXAMPLES)
    p.add_argument("table", choices=TABLES, help="what to run or write")
    _add_study_arguments(p)
    _add_table_arguments(p)
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="training configuration overrides applied to every job (e.g. optim.lr=1e-4)")
    p.set_defaults(func=run)


def _add_study_arguments(p) -> None:
    """The settings of the study: its data, methods, runs, budget and where its files go."""
    p.add_argument("--dataset", default="synthetic", help="dataset name (as sibnet train; default synthetic)")
    p.add_argument("--root", default=None, help="dataset folder (every dataset but the synthetic ones)")
    p.add_argument("--image-size", type=int, default=128, help="square input size (default 128)")
    p.add_argument("--folds", type=int, default=5, help="patient-wise cross-validation folds (default 5); 1: the "
                   "dataset's own train/val/test splits")
    p.add_argument("--seeds", type=int, default=1, help="number of seeds per fold: 0..N-1 (default 1)")
    p.add_argument("--budget", default="epochs=3", help="training budget per job: epochs=N and/or steps=N "
                                                        "(default epochs=3)")
    p.add_argument("--warm-budget", default=None, metavar="BUDGET",
                   help="training budget of the warm-started methods (warm-baseline, warm-sibnet), e.g. epochs=3: "
                        "fine-tune the converged model for a few epochs (default: --budget)")
    p.add_argument("--methods", default=None, help=f"comma-separated methods (default {DEFAULT_METHODS}; "
                   f"capacity: the base methods, default {CAPACITY_METHODS}; lambda-grid: the one method whose "
                   "lambdas are varied, default sibnet)")
    p.add_argument("--batch-size", type=int, default=16, help="batch size (default 16)")
    p.add_argument("--patience", type=int, default=None, help="early stopping after N epochs without a better "
                   "validation AUROC; the model of the best validation epoch (best.pt) is then evaluated "
                   "(default: off, the model at the end of the budget)")
    p.add_argument("--jobs", type=int, default=1, help="independent jobs run in parallel processes (default 1)")
    p.add_argument("--runs", default=None, help="folder of the jobs (default runs/experiments/DATASET-SIZEpx)")
    p.add_argument("--out", default=None, help="folder of the tables and figures (default RUNS/tables)")
    p.add_argument("--data-option", action="append", default=[], metavar="KEY=VALUE",
                   help="dataset option (YAML value), e.g. shortcut=Cardiomegaly or n=200; repeatable")
    p.add_argument("--held-out-test", action="store_true",
                   help="datasets without an official test split (busi): each fold's part is the test split and "
                        "the next fold's part the validation split of early stopping; the other folds train")
    p.add_argument("--eval-split", choices=("auto", "test", "val"), default="auto",
                   help="auto (default): the official test split when nonempty, else the fold's held-out part")
    p.add_argument("--keep-epochs", action="store_true", help="keep a model checkpoint of every epoch (table3 "
                                                              "Dice per epoch)")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N")
    p.add_argument("--report-only", action="store_true", help="table1, lambda-grid, capacity: write the table from the "
                                                              "finished jobs, train nothing")


def _add_table_arguments(p) -> None:
    """The settings of single tables."""
    p.add_argument("--reference", default=None, metavar="METHOD",
                   help="table1, table3: the method the paired differences are taken against (default baseline; "
                        "e.g. warm-baseline, the control of warm-sibnet)")
    p.add_argument("--sigmas", default=None, help="table4: comma-separated noise sds on [0, 1] images "
                                                  "(default 0,0.005,0.01,0.05,0.1)")
    p.add_argument("--probes", default=None, help="table5: comma-separated probes (default linear_svm,rbf_svm,"
                                                  "random_forest)")
    p.add_argument("--saliency", default="deep_taylor", help="table3: saliency method applied to every model "
                                                             "(default deep_taylor)")
    p.add_argument("--saliency-option", action="append", default=[], metavar="KEY=VALUE",
                   help="table3: an option of the saliency method (YAML value), e.g. contrast=clrp; repeatable")
    p.add_argument("--cases", type=int, default=2, metavar="N",
                   help="cases: figures of the first N evaluation images with each class present (default 2)")
    p.add_argument("--case-job", default=None, metavar="FOLD,SEED",
                   help="cases: the fold and seed whose jobs are shown (default the first of each)")
    p.add_argument("--max-maps", type=int, default=100, help="table3: images per job whose maps are scored "
                                                             "(default 100)")
    p.add_argument("--bn-stats", choices=BN_STATS, default="stored",
                   help="table3-5: BatchNorm statistics of the evaluated models: stored (the running averages "
                        "training left, default) or train (re-estimated with the final weights on each fold's "
                        "training split; results cached beside the stored ones)")
    p.add_argument("--lambdas", default=None, help="lambda-grid: comma-separated values of lambda_cd and of "
                                                   "lambda_sc (default 0,0.5,1,1.5,2)")
    p.add_argument("--capacities", default=None, help="capacity: comma-separated parameter multipliers m of the "
                                                      "standard DenseNet-121 (default 0.2,0.5,1,1.5,2)")


def build_study(args):
    from pathlib import Path

    import yaml

    from ..config import parse_override
    from ..errors import ConfigError
    from ..experiments.study import Study, parse_budget

    if args.seeds < 1:
        raise ConfigError(f"--seeds: must be >= 1, got {args.seeds}")
    if args.jobs < 1:
        raise ConfigError(f"--jobs: must be >= 1, got {args.jobs}")
    if args.image_size < 32:
        raise ConfigError(f"--image-size: DenseNet-121 needs at least 32 px, got {args.image_size}")
    options = {}
    for text in args.data_option:
        if "=" not in text:
            raise ConfigError(f"--data-option {text!r}: expected KEY=VALUE")
        key, raw = text.split("=", 1)
        try:
            options[key.strip()] = yaml.safe_load(raw)
        except yaml.YAMLError:
            raise ConfigError(f"--data-option {text!r}: value is not valid YAML") from None
    for text in args.overrides:
        parse_override(text)
    budget = parse_budget(args.budget)
    warm_budget = parse_budget(args.warm_budget, "--warm-budget") if args.warm_budget else None
    runs = Path(args.runs or f"runs/experiments/{args.dataset}-{args.image_size}px")
    return Study(dataset=args.dataset, runs=runs, budget=budget, root=args.root, image_size=args.image_size,
                 folds=args.folds, seeds=tuple(range(args.seeds)), batch_size=args.batch_size, options=options,
                 overrides=tuple(args.overrides), eval_split=args.eval_split, keep_epochs=args.keep_epochs,
                 device=args.device, patience=args.patience, warm_budget=warm_budget,
                 held_out_test=args.held_out_test)


def run(args) -> int:
    from pathlib import Path

    from ..experiments.runner import run_jobs
    from ..experiments.study import job_config, study_jobs
    from ..experiments.tables import command_line

    study = build_study(args)
    methods, settings = _methods(args)
    settings["reference"] = reference_method(args, methods)
    jobs = study_jobs(study, methods)
    for job in jobs[:len(methods)]:
        job_config(study, job)  # settings checked before anything runs
    if args.table == "status":
        _print_status(study, jobs)
        return 0
    failed = []
    if args.table in TRAINED and not args.report_only:
        results = run_jobs(study, jobs, args.jobs, log=lambda m: print(m, file=sys.stderr, flush=True))
        failed = [r for r in results if r["status"] == "failed"]
    out = Path(args.out) if args.out else study.runs / "tables"
    paths = _write_table(args, study, methods, jobs, out, command_line(canonical_argv(args)), settings)
    print(paths["markdown"])
    if paths.get("csv"):
        print(paths["csv"])
    for f in failed:
        print(f"failed: {f['job']}: {f['error']}", file=sys.stderr)
    return 1 if failed else 0


def _methods(args) -> tuple[list, dict]:
    """The methods of the table's jobs, and the settings its writer needs besides them (the lambda grid;
    the capacity study's base methods and multipliers)."""
    from ..experiments.methods import capacity_methods, parse_methods

    if args.table == "lambda-grid":
        from ..experiments.lambda_grid import DEFAULT_GRID, grid_methods

        grid = DEFAULT_GRID if args.lambdas is None else _floats(args.lambdas, "--lambdas")
        base = _lambda_base_name(args.methods)
        return grid_methods(grid, grid, base), {"grid": grid, "base": base}
    if args.table == "capacity":
        from ..experiments.capacity import parse_capacities

        bases = parse_methods(args.methods or CAPACITY_METHODS)
        capacities = parse_capacities(args.capacities)
        return capacity_methods(bases, capacities), {"bases": bases, "capacities": capacities}
    return parse_methods(args.methods or DEFAULT_METHODS), {}


def _lambda_base_name(methods: str | None) -> str:
    """lambda-grid: the one base method named by --methods (default sibnet)."""
    from ..errors import ConfigError
    from ..experiments.methods import LAMBDA_BASE

    names = [n.strip() for n in (methods or LAMBDA_BASE).split(",") if n.strip()]
    if len(names) != 1:
        raise ConfigError(f"--methods: lambda-grid takes one base method (e.g. sibnet-gradcam-gradient), got "
                          f"{methods!r}")
    return names[0]


def _print_status(study, jobs) -> None:
    from ..experiments.store import METRICS, job_status

    for job in jobs:
        print(f"{job_status(study, job):8s} {job.key}  {_progress_line(job.folder(study) / METRICS)}")


def _write_table(args, study, methods, jobs, out, command: str, settings: dict) -> dict:
    """Write the table ``args.table`` (and its figures) from the study's finished jobs; returns its paths."""
    if args.table == "table1":
        from ..experiments.table1 import write_table1

        return write_table1(study, methods, jobs, out, command, reference=settings["reference"])
    if args.table == "lambda-grid":
        from ..experiments.lambda_grid import write_lambda_grid

        return write_lambda_grid(study, settings["grid"], settings["grid"], jobs, out, command, settings["base"])
    if args.table == "capacity":
        from ..experiments.capacity import write_capacity

        return write_capacity(study, settings["bases"], settings["capacities"], jobs, out, command)
    if args.table == "table4":
        from ..evaluation.robustness import DEFAULT_SIGMAS
        from ..experiments.noise import write_table4

        sigmas = DEFAULT_SIGMAS if args.sigmas is None else _floats(args.sigmas, "--sigmas")
        return write_table4(study, methods, jobs, out, command, sigmas, bn_stats=args.bn_stats)
    if args.table == "table5":
        from ..evaluation.probes import PROBES
        from ..experiments.probes import write_table5

        probes = PROBES if args.probes is None else tuple(p.strip() for p in args.probes.split(",") if p.strip())
        return write_table5(study, methods, jobs, out, command, probes, bn_stats=args.bn_stats)
    from ..experiments.agreement import write_table3
    from ..saliency import check_options
    from .arguments import saliency_options

    options = saliency_options(args.saliency_option)
    check_options(args.saliency, options)
    if args.table == "cases":
        from ..experiments.cases import parse_case_job, write_cases

        return write_cases(study, methods, jobs, out, command, args.saliency, args.cases,
                           parse_case_job(args.case_job, study), options)
    return write_table3(study, methods, jobs, out, command, args.saliency, args.max_maps, args.bn_stats, options,
                        reference=settings["reference"])


def reference_method(args, methods) -> str:
    """table1's and table3's ``--reference`` (default the baseline), checked to be one of the study's methods."""
    from ..errors import ConfigError
    from ..experiments.methods import BASELINE

    if args.reference is None:
        return BASELINE
    names = [m.name for m in methods]
    if args.table not in REFERENCE_TABLES or args.reference not in names:
        raise ConfigError(f"--reference {args.reference!r}: table1 and table3 only, and one of --methods "
                          f"({', '.join(names)})")
    return args.reference


def canonical_argv(args) -> list[str]:
    """The invocation with every setting that shapes the results spelled out (defaults included), so
    the command in a table header reproduces it whatever was typed."""
    out = ["experiment", args.table, "--dataset", args.dataset]
    if args.root:
        out += ["--root", args.root]
    out += ["--image-size", str(args.image_size), "--folds", str(args.folds), "--seeds", str(args.seeds),
            "--budget", args.budget]
    if args.warm_budget:
        out += ["--warm-budget", args.warm_budget]
    if args.table == "lambda-grid":
        out += ["--lambdas", args.lambdas or "0,0.5,1,1.5,2", "--methods", _lambda_base_name(args.methods)]
    elif args.table == "capacity":
        out += ["--methods", args.methods or CAPACITY_METHODS, "--capacities", args.capacities or "0.2,0.5,1,1.5,2"]
    else:
        out += ["--methods", args.methods or DEFAULT_METHODS]
    out += ["--batch-size", str(args.batch_size)]
    if args.patience is not None:
        out += ["--patience", str(args.patience)]
    if args.runs:
        out += ["--runs", args.runs]
    if args.out:
        out += ["--out", args.out]
    for opt in args.data_option:
        out += ["--data-option", opt]
    if args.held_out_test:
        out.append("--held-out-test")
    out += ["--eval-split", args.eval_split]
    if args.keep_epochs:
        out.append("--keep-epochs")
    if args.table == "table4" and args.sigmas is not None:
        out += ["--sigmas", args.sigmas]
    if args.table == "table5" and args.probes is not None:
        out += ["--probes", args.probes]
    if args.table in REFERENCE_TABLES and args.reference is not None:
        out += ["--reference", args.reference]
    if args.table in ("table3", "cases"):
        out += ["--saliency", args.saliency] + (["--max-maps", str(args.max_maps)] if args.table == "table3" else
                                                ["--cases", str(args.cases)] + (["--case-job", args.case_job]
                                                                                if args.case_job else []))
        for opt in args.saliency_option:
            out += ["--saliency-option", opt]
    if args.table in ("table3", "table4", "table5") and args.bn_stats != "stored":
        out += ["--bn-stats", args.bn_stats]
    return out + list(args.overrides)


def _progress_line(metrics) -> str:
    """``(N epoch(s) finished; best val AUROC ... at epoch E; class maps' cosine ...)`` from a job's metrics.csv."""
    import csv
    import math

    rows = list(csv.DictReader(open(metrics, newline=""))) if metrics.is_file() else []
    text = f"({len(rows)} epoch(s) finished"

    def num(row, key):
        try:
            return float(row.get(key) or "nan")
        except ValueError:
            return math.nan

    scored = [r for r in rows if math.isfinite(num(r, "val_auroc"))]
    if scored:
        best = max(scored, key=lambda r: num(r, "val_auroc"))
        text += f"; best val AUROC {num(best, 'val_auroc'):.4f} at epoch {best['epoch']}"
    if rows and math.isfinite(num(rows[-1], "val_map_cos")):
        text += f"; last epoch's class-map cosine {num(rows[-1], 'val_map_cos'):.3f} (embeddings " \
                f"{num(rows[-1], 'val_emb_cos'):.3f})"
    return text + ")"


def _floats(text: str, flag: str) -> tuple[float, ...]:
    from ..errors import ConfigError

    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ConfigError(f"{flag}: expected comma-separated numbers, got {text!r}") from None
    if not values or any(v < 0 for v in values):
        raise ConfigError(f"{flag}: expected numbers >= 0, got {text!r}")
    return values
