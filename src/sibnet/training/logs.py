"""Run logs: TensorBoard scalars and ``metrics.csv`` (one row per epoch), written by rank 0 only.

``metrics.csv`` is rewritten (atomically) from the run's history after every epoch, so after a
resume it holds exactly the epochs of the resumed state; TensorBoard events after the resume
step are purged (``SummaryWriter(purge_step=...)``).
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from ..files import atomic_write

FIRST_COLUMNS = ["epoch", "step", "lr", "train_total", "train_wce", "train_cd", "train_sc", "val_auroc",
                 "best_val_auroc", "seconds"]


class RunLogger:
    """TensorBoard + CSV writer; every method is a no-op when ``enabled`` is false."""

    def __init__(self, out: str | Path, *, enabled: bool = True, purge_step: int | None = None):
        self.out = Path(out)
        self.enabled = enabled
        self.writer = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.out / "tensorboard"), purge_step=purge_step)

    def scalars(self, step: int, values: dict[str, float], prefix: str = "") -> None:
        if self.writer is None:
            return
        for key, value in values.items():
            if value is not None and not (isinstance(value, float) and math.isnan(value)):
                self.writer.add_scalar(f"{prefix}{key}", float(value), step)

    def history(self, rows: list[dict]) -> None:
        """Rewrite ``metrics.csv`` from the per-epoch rows."""
        if not self.enabled:
            return
        write_metrics_csv(self.out / "metrics.csv", rows)
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def write_metrics_csv(path: Path, rows: list[dict]) -> None:
    columns = list(FIRST_COLUMNS)
    for row in rows:
        columns += [k for k in row if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _fmt(row.get(k)) for k in columns})
    data = buf.getvalue().encode()
    atomic_write(path, lambda fh: fh.write(data), what="metrics")


def _fmt(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return str(value)
