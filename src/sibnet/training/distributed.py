"""Process-group plumbing for ``torchrun --nproc_per_node=N -m sibnet train ...``.

One process per device: gloo on the CPU, nccl on CUDA (``LOCAL_RANK`` picks the GPU). Without
torchrun's environment (``WORLD_SIZE`` unset or 1) everything runs in one process and the helpers
below are no-ops. Rank 0 alone writes checkpoints and logs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from ..errors import ConfigError


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(spec: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> ``cuda:LOCAL_RANK`` when CUDA is available, else ``cpu``."""
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"train.device: {spec!r} requested but CUDA is not available")
        index = int(spec.split(":", 1)[1]) if ":" in spec else local_rank
        if index >= torch.cuda.device_count():
            raise ConfigError(f"train.device: {spec!r} but only {torch.cuda.device_count()} GPU(s)")
        return torch.device("cuda", index)
    return torch.device("cpu")


def init_distributed(device_spec: str = "auto") -> DistEnv:
    """Join torchrun's process group when ``WORLD_SIZE`` > 1; pick this process's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_spec, local_rank)
    if world > 1:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistEnv(rank=rank, world_size=world, local_rank=local_rank, device=device)


def cleanup(env: DistEnv) -> None:
    if env.distributed and dist.is_initialized():
        dist.destroy_process_group()


def barrier(env: DistEnv) -> None:
    if env.distributed:
        dist.barrier()


def all_gather_objects(obj: Any, env: DistEnv) -> list:
    """Every rank's ``obj`` (picklable), in rank order; ``[obj]`` without a process group."""
    if not env.distributed:
        return [obj]
    out: list = [None] * env.world_size
    dist.all_gather_object(out, obj)
    return out


def all_reduce_sum(values: dict[str, float], env: DistEnv) -> dict[str, float]:
    """Sum a dict of floats over the ranks (keys must agree on every rank)."""
    if not env.distributed or not values:
        return dict(values)
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64,
                     device=env.device if env.device.type == "cuda" else "cpu")
    dist.all_reduce(t)
    return {k: float(v) for k, v in zip(keys, t.tolist())}


def broadcast_object(obj: Any, env: DistEnv) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not env.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def sync_buffers(model: torch.nn.Module, env: DistEnv) -> None:
    """Give every rank rank 0's buffers (BatchNorm running statistics), as DDP does before each
    training forward; used before validation so that all ranks evaluate the checkpointed model."""
    if not env.distributed:
        return
    with torch.no_grad():
        for buf in model.buffers():
            dist.broadcast(buf, src=0)
