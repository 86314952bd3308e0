"""Data order as a pure function of (seed, epoch), so that a resumed run sees the same batches.

* :class:`EpochSampler` — torch's ``DistributedSampler`` (order = ``randperm`` seeded with
  ``seed + epoch``, each rank takes every ``world``-th index of the padded order) that can also
  start part-way through an epoch (``set_start``), for resuming from a mid-epoch checkpoint.
  It works without a process group (``num_replicas=1, rank=0``).
* :class:`StreamBatchSampler` — an endless stream of batches for the unlabeled pool: batch ``b``
  of rank ``r`` is a pure function of (seed, b, r), drawn from consecutive seeded permutations.
* :func:`shard` — the contiguous-free, unpadded split used for validation (rank ``r`` takes
  indices ``r, r+world, ...``); :func:`unshard` puts gathered per-rank results back in order.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import torch
from torch.utils.data import DistributedSampler, Sampler

from .rng import mix_seed


class EpochSampler(DistributedSampler):
    """``DistributedSampler`` with a start offset (in samples of this rank) within the epoch."""

    def __init__(self, dataset, *, num_replicas: int = 1, rank: int = 0, seed: int = 0,
                 shuffle: bool = True, drop_last: bool = False):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed,
                         drop_last=drop_last)
        self.start = 0

    def set_start(self, start: int) -> None:
        self.start = max(0, min(int(start), self.num_samples))

    def __iter__(self) -> Iterator[int]:
        return iter(list(super().__iter__())[self.start:])

    def __len__(self) -> int:
        return self.num_samples - self.start


def stream_indices(n: int, seed: int, start: int, count: int) -> list[int]:
    """Items ``start .. start+count-1`` of the endless stream perm_0 + perm_1 + ... of ``range(n)``,
    where perm_c is a ``randperm`` seeded with ``mix_seed(seed, c)``."""
    out: list[int] = []
    pos = start
    while len(out) < count:
        cycle, offset = divmod(pos, n)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(mix_seed(seed, cycle)))
        take = min(n - offset, count - len(out))
        out += perm[offset:offset + take].tolist()
        pos += take
    return out


class StreamBatchSampler(Sampler[list[int]]):
    """Endless batches for the unlabeled pool, starting at global batch ``start`` (per rank)."""

    def __init__(self, n: int, batch_size: int, *, seed: int = 0, rank: int = 0, num_replicas: int = 1,
                 start: int = 0):
        if n < 1:
            raise ValueError("the unlabeled pool is empty")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.rank, self.num_replicas, self.start = rank, num_replicas, start

    def batch(self, b: int) -> list[int]:
        first = (b * self.num_replicas + self.rank) * self.batch_size
        return stream_indices(self.n, self.seed, first, self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        b = self.start
        while True:
            yield self.batch(b)
            b += 1


def shard(n: int, rank: int, world: int) -> list[int]:
    return list(range(rank, n, world))


def unshard(parts: Sequence[torch.Tensor]) -> torch.Tensor:
    """Inverse of :func:`shard`: ``parts[r]`` holds the rows of indices r, r+world, ..."""
    world = len(parts)
    n = sum(p.shape[0] for p in parts)
    out = parts[0].new_empty((n, *parts[0].shape[1:]))
    for r, p in enumerate(parts):
        out[r::world] = p
    return out
