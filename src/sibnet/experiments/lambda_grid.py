"""``lambda-grid``: a SIBNet method over a grid of (lambda_cd, lambda_sc) (the paper's Fig. 11).

Every grid point is a method ``<base>-lambda-<l1>-<l2>`` (see
:func:`sibnet.experiments.methods.lambda_method`; the base method is ``sibnet``, DeepTaylor, unless the
study names another, e.g. ``sibnet-gradcam-gradient``) trained as ordinary resumable jobs of the study
(fold x seed). The table holds mean AUROC mean (sd) over the runs of each point, and the
heatmap ``fig11_lambda_grid.png`` the mean AUROC (rows lambda_sc, columns lambda_cd; blank where
no run has finished).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..evaluation.statistics import finite_mean, finite_sd, mean_sd
from .figures import heatmap, save_figure
from .methods import LAMBDA_BASE, Method, lambda_base, lambda_method
from .store import collect
from .study import Job, Study
from .tables import study_header, write_outputs

DEFAULT_GRID = (0.0, 0.5, 1.0, 1.5, 2.0)


def grid_methods(values_cd, values_sc, base: Method | str = LAMBDA_BASE) -> list[Method]:
    return [lambda_method(a, b, base) for b in values_sc for a in values_cd]


def write_lambda_grid(study: Study, values_cd, values_sc, jobs: list[Job], out: Path, command: str,
                      base: Method | str = LAMBDA_BASE) -> dict:
    """Write ``lambda_grid.md``, ``lambda_grid.csv`` and ``fig11_lambda_grid.png`` to ``out`` from the
    finished jobs of ``base``'s grid; returns their paths plus ``grid``, the mean AUROC per (lambda_sc,
    lambda_cd)."""
    base = lambda_base(base)
    methods = grid_methods(values_cd, values_sc, base)
    base_name = base.name
    done = collect(study, jobs)
    grid = np.full((len(values_sc), len(values_cd)), np.nan)
    rows, csv_rows = [], []
    for i, b in enumerate(values_sc):
        row = [f"{b:g}"]
        for j, a in enumerate(values_cd):
            name = lambda_method(a, b, base).name
            v = [np.nan if r["mean_auroc"] is None else r["mean_auroc"] for jb, r in done.items() if jb.method == name]
            n_total = sum(1 for jb in jobs if jb.method == name)
            row.append(f"{mean_sd(v)} [{len(v)}/{n_total}]" if v else f"n/a [0/{n_total}]")
            if v:
                grid[i, j] = finite_mean(v) if finite_mean(v) is not None else np.nan
            csv_rows.append({"lambda_cd": a, "lambda_sc": b, "runs": len(v),
                             "auroc_mean": finite_mean(v) if v else None, "auroc_sd": finite_sd(v) if v else None})
        rows.append(row)
    header = study_header(command, study, methods[:1] + methods[-1:], [
        f"grid: lambda_cd in {list(values_cd)}, lambda_sc in {list(values_sc)} of {base_name} "
        f"({base.description})",
        f"finished jobs: {len(done)} of {len(jobs)}",
        "cell: mean AUROC over labels per run, mean (sd) over runs [finished/total runs]"])
    figs = []
    if np.isfinite(grid).any():
        fig = heatmap(grid, [f"{a:g}" for a in values_cd], [f"{b:g}" for b in values_sc], "lambda_cd", "lambda_sc",
                      f"Fig. 11: mean AUROC of {base_name} ({study.dataset}, {study.image_size} px, "
                      f"budget {study.budget_label})")
        figs.append(str(save_figure(fig, Path(out) / "fig11_lambda_grid.png")))
    paths = write_outputs(out, "lambda_grid", f"Lambda grid: {base_name} on {study.dataset}", header,
                          [("Mean AUROC (rows lambda_sc, columns lambda_cd)",
                            ["λ_sc \\ λ_cd"] + [f"{a:g}" for a in values_cd], rows)],
                          ["lambda_cd", "lambda_sc", "runs", "auroc_mean", "auroc_sd"], csv_rows, figs)
    paths["figures"] = figs
    paths["grid"] = grid
    return paths


__all__ = ["DEFAULT_GRID", "grid_methods", "write_lambda_grid"]
