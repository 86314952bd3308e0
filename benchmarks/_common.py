"""Shared helpers of the speed benchmarks: timing, machine description, peak memory.

Timing convention: each measured callable runs ``warmup`` times untimed (the first vectorised
backward builds its batching rules once, a large one-time cost), then ``repeats`` times, each
call timed with ``time.perf_counter``; the figure printed is the median in milliseconds.
"""

from __future__ import annotations

import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def time_calls(fn, *, warmup: int = 2, repeats: int = 5) -> list[float]:
    """Run ``fn()`` ``warmup`` times untimed, then ``repeats`` times; the per-call milliseconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000.0)
    return times


def median(values: list[float]) -> float:
    return statistics.median(values)


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "unknown"
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def machine_header(title: str) -> str:
    """Lines describing the run: command, date, CPU, cores, torch threads and the load average."""
    return "\n".join([
        f"# {title}",
        f"# command: {' '.join([Path(sys.executable).name] + sys.argv)}",
        f"# date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}",
        f"# cpu: {cpu_model()}; nproc: {os.cpu_count()}; torch {torch.__version__}; "
        f"torch.get_num_threads(): {torch.get_num_threads()}; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}",
        f"# load average (1, 5, 15 min) at start: {load_average()}",
    ])


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, MiB (Linux reports ``ru_maxrss`` in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def current_rss_mb() -> float:
    """Current resident set size of this process, MiB (from /proc/self/status; NaN where absent)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")
