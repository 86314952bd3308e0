"""Tabulate the epoch-by-epoch figures of a study's jobs from their metrics.csv (partial jobs too).

    python docs/results/tabulate_progress.py RUNS OUT.md JOB [JOB ...]   # JOB: method/fold0-seed0

Copies each job's metrics.csv beside OUT.md (``metrics/<method>-<fold-seed>.csv``) and writes the
validation AUROC per epoch (with the class maps' and their embeddings' mean pairwise cosine for the
SIBNet jobs) and the training weighted BCE per epoch as Markdown. Finished jobs' test figures are
in the study's table1 (``sibnet experiment table1 ... --report-only``).
"""

import csv
import shutil
import sys
from pathlib import Path


def main(runs: str, out: str, jobs: list[str]) -> None:
    out = Path(out)
    (out.parent / "metrics").mkdir(parents=True, exist_ok=True)
    data = {}
    for job in jobs:
        src = Path(runs) / job / "metrics.csv"
        shutil.copyfile(src, out.parent / "metrics" / f"{job.replace('/', '-')}.csv")
        data[job] = list(csv.DictReader(open(src, newline="")))
    n = max(len(v) for v in data.values())
    lines = [f"# {', '.join(jobs)}: epoch by epoch", "",
             f"Command: `python docs/results/tabulate_progress.py {runs} {out} {' '.join(jobs)}`; the figures are the",
             "jobs' own metrics.csv (copied to `metrics/`), written by `sibnet experiment` while they trained; a job",
             "with fewer rows was still running or stopped early. Validation mean AUROC per epoch; for SIBNet jobs in",
             "brackets the class maps' mean pairwise cosine / their embeddings' (32 validation images, eval mode).", "",
             "| epoch | " + " | ".join(jobs) + " |", "|---" * (len(jobs) + 1) + "|"]
    for e in range(n):
        row = [str(e + 1)]
        for job in jobs:
            r = data[job][e] if e < len(data[job]) else None
            cell = "" if r is None else f"{float(r['val_auroc']):.3f}"
            if r is not None and r.get("val_map_cos"):
                cell += f" ({float(r['val_map_cos']):.2f} / {float(r['val_emb_cos']):.2f})"
            row.append(cell)
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "Training weighted BCE per epoch (raw):", "", "| epoch | " + " | ".join(jobs) + " |",
              "|---" * (len(jobs) + 1) + "|"]
    for e in range(n):
        lines.append("| " + " | ".join([str(e + 1)] + [f"{float(data[j][e]['train_wce']):.3f}" if e < len(data[j])
                                                       else "" for j in jobs]) + " |")
    out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    if len(sys.argv) < 4:
        raise SystemExit(__doc__)
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
