"""Writing result tables: Markdown and CSV with a header that says how they were made.

The header (the same lines in both files; ``# `` comment lines at the top of the CSV) states the
exact command, the dataset, image size, budget, folds x seeds, the evaluation split and the code
version (``git describe --always`` of the source tree, ``-dirty`` with uncommitted changes to the
code or settings, else the package version), plus
any notes of the table (methods not implemented, jobs still missing).

Numbers: mean (sd) over the runs (folds x seeds; sd with ddof = 1, as
:func:`sibnet.evaluation.statistics.mean_sd`); paired differences from
:func:`sibnet.evaluation.statistics.paired_difference` (t-interval, Wilcoxon p).
"""

from __future__ import annotations

import csv
import io
import math
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Sequence

from .. import __version__
from ..errors import SibnetError
from ..files import atomic_write_text
from ..losses.sibnet_loss import objective_text
from .methods import not_implemented
from .study import Job, job_config

# what "-dirty" looks at: the code and the settings that make a result, not the result files
# (tables written into the repository, e.g. under docs/results, do not make the code dirty)
CODE_PATHS = ("src", "configs", "pyproject.toml")

def models_line(done: int, total: int, bn_stats: str, use: str = "not retrained", checkpoint: str = "last.pt") -> str:
    """The header line naming the evaluated models of table 3, 4 or 5 and their BatchNorm statistics."""
    stats = ("BatchNorm running statistics as training left them" if bn_stats == "stored" else
             "BatchNorm statistics re-estimated with the final weights on each fold's training split "
             "(--bn-stats train; sibnet.evaluation.batchnorm)")
    return f"models: the finished table-1 jobs of this study ({done} of {total}), {checkpoint}, {use}; {stats}"


#: the header line of every table with a paired difference against the baseline
PAIRED_NOTE = ("difference vs baseline: paired over the runs (fold, seed) finished for both methods; 95% t-interval; "
               "exact two-sided Wilcoxon signed-rank p (with n pairs it cannot fall below 2/2^n: 0.0625 for 5, so "
               "below 6 pairs no difference reaches p < 0.05)")


def code_version() -> str:
    """``git describe --always`` of the sibnet source tree, with ``-dirty`` when ``src/``,
    ``configs/`` or ``pyproject.toml`` have uncommitted changes; else ``sibnet <version>``."""
    root = Path(__file__).resolve().parents[3]

    def git(*args):
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=20)

    try:
        out = git("describe", "--always")
        if out.returncode == 0 and out.stdout.strip():
            status = git("status", "--porcelain", "--untracked-files=no", "--", *CODE_PATHS)
            dirty = "-dirty" if status.returncode != 0 or status.stdout.strip() else ""
            return f"git {out.stdout.strip()}{dirty} (sibnet {__version__})"
    except (OSError, subprocess.SubprocessError):
        pass
    return f"sibnet {__version__}"


def command_line(argv: Sequence[str] | None = None) -> str:
    """The command as typed: ``sibnet`` followed by the arguments, shell-quoted."""
    argv = list(sys.argv[1:] if argv is None else argv)
    return "sibnet " + " ".join(shlex.quote(a) for a in argv)


def fmt(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "nan"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def fmt_diff(d: dict, digits: int = 3) -> tuple[str, str]:
    """(``"+0.012 [-0.004, 0.028]"``, p) from a :func:`paired_difference` result."""
    if d["n"] == 0:
        return "n/a", "n/a"
    if d["n"] == 1:  # one pair: no interval and no test
        return f"{d['mean_diff']:+.{digits}f} (n=1)", "n/a"
    lo, hi = d["ci"]
    text = f"{d['mean_diff']:+.{digits}f} [{fmt(lo, digits)}, {fmt(hi, digits)}]"
    p = "n/a" if math.isnan(d["p_wilcoxon"]) else f"{d['p_wilcoxon']:.3g}"
    return text, p


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence]) -> str:
    def cell(v):
        return str(v).replace("|", "\\|")

    lines = ["| " + " | ".join(cell(c) for c in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def write_outputs(out: Path, name: str, title: str, header: Sequence[str], sections: Sequence[tuple],
                  csv_columns: Sequence[str], csv_rows: Sequence[dict], figures: Sequence[str] = ()) -> dict:
    """Write ``out/name.md`` and ``out/name.csv``.

    ``sections``: ``(heading, columns, rows)`` Markdown tables (or ``(heading, text)`` paragraphs).
    ``csv_rows``: dicts with the ``csv_columns`` keys (full precision). Returns the paths.
    """
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SibnetError(f"--out {out}: cannot create the folder ({exc.strerror or exc})") from None
    md = [f"# {title}", ""] + [f"- {h}" for h in header] + [""]
    for sec in sections:
        md += [f"## {sec[0]}", ""]
        if len(sec) == 2:
            md += [sec[1], ""]
        else:
            md += [markdown_table(sec[1], sec[2]), ""]
    if figures:
        md += ["## Figures", ""] + [f"![{Path(f).stem}]({Path(f).name})" for f in figures] + [""]
    buf = io.StringIO()
    for h in [title, *header]:
        buf.write(f"# {h}\n")
    writer = csv.DictWriter(buf, fieldnames=list(csv_columns), lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for row in csv_rows:
        writer.writerow({k: _csv_value(row.get(k)) for k in csv_columns})
    paths = {"markdown": out / f"{name}.md", "csv": out / f"{name}.csv"}
    for key, text in (("markdown", "\n".join(md)), ("csv", buf.getvalue())):
        atomic_write_text(paths[key], text, what="table")
    return {k: str(v) for k, v in paths.items()}


def _csv_value(v):
    if v is None:
        return ""
    if isinstance(v, float):
        return "" if math.isnan(v) else repr(v)
    return v


def read_csv_table(path: str | Path) -> tuple[list[str], list[dict]]:
    """(header lines without ``# ``, rows) of a CSV written by :func:`write_outputs`."""
    lines = Path(path).read_text().splitlines()
    header = [ln[2:] for ln in lines if ln.startswith("# ")]
    body = [ln for ln in lines if not ln.startswith("# ")]
    return header, list(csv.DictReader(body))


def objectives_line(study, methods) -> str:
    """The header line stating each method's training objective in words (methods that share one are
    named together), resolved from the jobs' configuration."""
    groups: dict[str, list[str]] = {}
    for m in methods:
        cfg = job_config(study, Job(m.name, 0, study.seeds[0]))
        groups.setdefault(objective_text(cfg.loss), []).append(m.name)
    return "objectives: " + "; ".join(f"{', '.join(names)}: {text}" for text, names in groups.items())


def study_header(command: str, study, methods, extra: Sequence[str] = ()) -> list[str]:
    """The common header lines of a table built from a study's jobs."""
    lines = [f"command: `{command}`",
             f"dataset: {study.dataset}" + (f" (root {study.root})" if study.root else "")
             + (f", options {study.data_options()}" if study.data_options() else ""),
             f"image size: {study.image_size} px; batch size {study.batch_size}",
             f"budget: {study.budget_label} per job " + (
                 "(no early stopping; the model at the end of the budget is evaluated)" if study.patience is None
                 else f"(early stopping after {study.patience} epochs without a better validation AUROC; the "
                      "model of the best validation epoch, best.pt, is evaluated)"),
             (f"runs: {study.folds} patient-wise folds" + (
                 " (each fold's part is the test split, the next fold's part the validation split, the other "
                 f"{study.folds - 2} train)" if study.held_out_test else "") if study.folds > 1 else
              "runs: the dataset's own train/val/test splits") + f" x seeds {list(study.seeds)} "
             f"(job folders under {study.runs})",
             f"methods: {', '.join(m.name for m in methods)}",
             objectives_line(study, methods),
             f"code version: {code_version()}"]
    if study.overrides:
        lines.append(f"configuration overrides: {' '.join(study.overrides)}")
    missing = not_implemented()
    if missing:
        lines.append("not implemented (not run): " + "; ".join(f"{m.name} ({m.description})" for m in missing))
    return lines + list(extra)


__all__ = ["PAIRED_NOTE", "code_version", "command_line", "fmt", "fmt_diff", "markdown_table", "models_line",
           "objectives_line",
           "read_csv_table", "study_header", "write_outputs"]
