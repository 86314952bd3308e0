"""Reading the CSV label files of the datasets, with errors that name the file, line and column.

:func:`read_table` accepts plain or gzip-compressed files (``.gz``), any line ending (LF, CRLF and
the old-Mac CR-only endings of GlaS's ``Grade.csv``), and strips spaces around column names and
values (GlaS writes `` benign``). Each row is returned with its physical line number in the file
(the header is line 1), which is what messages quote.
"""

from __future__ import annotations

import csv
import gzip
import io
from pathlib import Path

from ..errors import DataError


def _open_text(path: Path):
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8-sig", newline="")
    return open(path, encoding="utf-8-sig", newline="")


def read_table(path: str | Path, required: tuple[str, ...] = ()) -> tuple[list[str], list[tuple[int, dict]]]:
    """``(columns, [(line, {column: value}), ...])`` with stripped names and values."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: label file not found")
    try:
        with _open_text(path) as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            if header is None:
                raise DataError(f"{path}: empty file (no header row)")
            columns = [h.strip() for h in header]
            rows = []
            for values in reader:
                if not values or all(not v.strip() for v in values):
                    continue
                line = reader.line_num
                if len(values) > len(columns):
                    extra = values[len(columns):]
                    if any(v.strip() for v in extra):
                        raise DataError(f"{path} line {line}: {len(values)} fields but the header has "
                                        f"{len(columns)} columns")
                rows.append((line, {c: (values[j].strip() if j < len(values) else "")
                                    for j, c in enumerate(columns)}))
    except (UnicodeDecodeError, csv.Error, OSError, EOFError) as exc:
        raise DataError(f"{path}: unreadable CSV ({exc})") from None
    missing = [c for c in required if c not in columns]
    if missing:
        raise DataError(f"{path}: missing column {missing[0]!r} (columns found: {', '.join(columns)})")
    return columns, rows


def read_list(path: str | Path) -> list[str]:
    """Non-empty stripped lines of a text file (the NIH split lists)."""
    path = Path(path)
    with open(path, encoding="utf-8", newline="") as fh:
        return [s for s in (line.strip() for line in fh.read().splitlines()) if s]


def first_existing(*candidates: Path) -> Path | None:
    for c in candidates:
        if c.is_file():
            return c
    return None
