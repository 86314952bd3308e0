"""Time a decoding epoch and a cached epoch over the NIH folder (``../shared/data/nih-cxr14``).

Epoch 1 reads every image through the loader (PNG decode + resize); building the cache is that
same pass writing into the memory-mapped arrays. Epoch 2 reads the cached dataset. Both iterate a
DataLoader with the same batch size and workers. Prints the two times and their ratio.

    python benchmarks/data_cache.py [--root PATH] [--size 320] [--workers 0] [--batch 32]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from sibnet.data import CachedDataset, NIHChestXray


def epoch(ds, batch, workers) -> float:
    t = time.perf_counter()
    n = 0
    for b in DataLoader(ds, batch_size=batch, num_workers=workers):
        n += b["image"].shape[0]
    assert n == len(ds)
    return time.perf_counter() - t


def main() -> None:
    here = Path(__file__).resolve().parents[1]
    p = argparse.ArgumentParser()
    p.add_argument("--root", default=str(here.parent / "shared" / "data" / "nih-cxr14"))
    p.add_argument("--size", type=int, default=320)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(1)
    ds = NIHChestXray(args.root, image_size=args.size, boxes=False)
    with tempfile.TemporaryDirectory() as cache_dir:
        t0 = time.perf_counter()
        cached = CachedDataset(ds, cache_dir, workers=args.workers)
        build = time.perf_counter() - t0
        first = min(epoch(ds, args.batch, args.workers) for _ in range(args.repeats))
        second = min(epoch(cached, args.batch, args.workers) for _ in range(args.repeats))
    print(f"NIH folder: {len(ds)} images at {args.size} px, batch {args.batch}, workers {args.workers}")
    print(f"cache build (decode + write):  {build:7.2f} s")
    print(f"epoch 1, decoding (best of {args.repeats}): {first:7.2f} s  ({len(ds) / first:7.0f} img/s)")
    print(f"epoch 2, cached   (best of {args.repeats}): {second:7.2f} s  ({len(ds) / second:7.0f} img/s)")
    print(f"cached epoch is {first / second:.1f}x faster")


if __name__ == "__main__":
    main()
