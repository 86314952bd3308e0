"""The thin object around the loop: :class:`Trainer` sets up processes, seeds, resume and logs.

``Trainer(cfg).fit()`` is what ``sibnet train`` runs; under ``torchrun`` every process runs it and
they join one process group (see :mod:`.distributed`).
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import torch.nn as nn

from ..config import RESUMABLE_CHANGES, Config, diff_configs, dump_config
from ..errors import ConfigError, SibnetError
from ..files import previous_path, remove_stale_temporaries
from .build import LossFactory, build_run
from .checkpoint import load_checkpoint
from .distributed import barrier, cleanup, init_distributed
from .logs import RunLogger
from .loop import TrainState, fit, restore_run
from .rng import configure_determinism, mix_seed, seed_everything

# keys added after runs were saved whose behaviour before was NOT today's default: what they were
LEGACY_VALUES = {"loss": {"balance": "none", "contrast": "none"}}


def with_config_defaults(saved: dict) -> dict:
    """A configuration dict saved by an earlier version, with the keys added since at their defaults.

    A key that did not exist when a run or job was saved had, in effect, its default value then
    (or, for the keys in ``LEGACY_VALUES``, the behaviour of the versions before it: e.g. a run saved
    before ``loss.balance`` existed trained on the raw terms, ``none``); comparing against it keeps
    old runs resumable after new settings appear, and never relabels them.
    """
    def fill(record: dict, defaults: dict) -> dict:
        out = dict(record)
        for key, value in defaults.items():
            if key not in out:
                out[key] = value
            elif isinstance(value, dict) and isinstance(out[key], dict):
                out[key] = fill(out[key], value)
        return out

    defaults = Config().to_dict()
    for section, values in LEGACY_VALUES.items():
        defaults[section] = {**defaults[section], **values}
    return fill(saved, defaults)


def check_resumable(saved: dict, cfg: Config, path: Path) -> None:
    """Refuse to resume when a setting that shapes the run differs from the checkpoint's."""
    changed = [k for k in diff_configs(with_config_defaults(saved), cfg.to_dict())
               if not any(k == r or k.startswith(r + ".") for r in RESUMABLE_CHANGES)]
    if changed:
        raise ConfigError(f"--resume {path}: the configuration differs from the checkpoint's in "
                          f"{', '.join(changed[:8])}; resume with the same settings (only "
                          f"{', '.join(RESUMABLE_CHANGES)} may change)")


def _training_checkpoint(path: Path) -> dict:
    ckpt = load_checkpoint(path)
    if "state" not in ckpt or "optimizer" not in ckpt or "config" not in ckpt:
        raise SibnetError(f"{path}: checkpoint lacks the training state needed to resume")
    return ckpt


def earlier_checkpoints(path: str | Path) -> list[tuple[Path, int]]:
    """The other checkpoints beside ``path`` that a run can continue from (the kept previous
    ``last.prev.pt``, ``best.pt``), readable ones only, as ``(path, step)``, latest step first."""
    path = Path(path)
    out = []
    for other in (previous_path(path.parent / "last.pt"), path.parent / "best.pt", path.parent / "last.pt"):
        if other.resolve() == path.resolve() or not other.is_file():
            continue
        try:
            out.append((other, int(_training_checkpoint(other)["state"]["step"])))
        except (SibnetError, KeyError, TypeError, ValueError):
            continue
    return sorted(out, key=lambda item: -item[1])


def load_resumable(path: str | Path) -> dict:
    """The checkpoint at ``path`` (a run's folder means its ``last.pt``), ready to resume; a missing,
    truncated or corrupt file is refused naming it and the earlier checkpoint to continue from."""
    path = Path(path)
    if path.is_dir():
        path = path / "last.pt"
    try:
        if not path.is_file():
            raise SibnetError(f"--resume: no checkpoint at {path} (runs write <out>/last.pt)")
        return _training_checkpoint(path)
    except SibnetError as exc:
        earlier = earlier_checkpoints(path)
        if not earlier:
            raise
        options = " or ".join(f"{p} (step {step})" for p, step in earlier)
        raise SibnetError(f"{exc}; the run can continue from {options}: "
                          f"sibnet train --resume {earlier[0][0]}") from None


def newest_checkpoint(out: str | Path) -> Path | None:
    """For ``--resume auto``: the readable checkpoint of the run in ``out`` with the most steps
    (``last.pt``, else the kept ``last.prev.pt`` or ``best.pt``); None when ``out`` holds no run."""
    out = Path(out)
    last = out / "last.pt"
    candidates = [p for p in (last, previous_path(last), out / "best.pt") if p.is_file()]
    if not candidates:
        return None
    if last.is_file():
        try:
            _training_checkpoint(last)
            return last
        except SibnetError:
            pass
    earlier = earlier_checkpoints(last)
    if not earlier:
        load_resumable(candidates[0])  # raises, naming the file
    return earlier[0][0]


def copy_run_history(source: Path, out: Path) -> None:
    """Copy a run's files (checkpoints, metrics.csv, config.yaml, tensorboard/) from ``source`` to ``out``."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        for item in sorted(source.iterdir()):
            if item.name.startswith(".") or item.name.endswith(".tmp"):
                continue
            if item.is_file():
                shutil.copy2(item, out / item.name)
            elif item.is_dir() and item.name == "tensorboard":
                shutil.copytree(item, out / item.name, dirs_exist_ok=True)
    except OSError as exc:
        raise SibnetError(f"cannot copy the run in {source} to {out}: {exc.strerror or exc}") from None


class Trainer:
    """Train a classifier as configured; parts may be injected (datasets, model, loss factory)."""

    def __init__(self, cfg: Config, *, datasets: tuple | None = None, model: nn.Module | None = None,
                 loss_factory: LossFactory | None = None):
        self.cfg = cfg
        self.datasets, self.model, self.loss_factory = datasets, model, loss_factory

    def fit(self, resume: str | Path | None = None, overwrite: bool = False) -> dict:
        """Train (or continue the run in ``resume``); returns a summary dict."""
        cfg = self.cfg
        out = Path(cfg.out)
        ckpt, source = None, None
        if resume is not None:
            resume = Path(resume)
            if resume.is_dir():
                resume = resume / "last.pt"
            ckpt = load_resumable(resume)
            check_resumable(ckpt.get("config", {}), cfg, resume)
            if resume.parent.resolve() != out.resolve():  # continue elsewhere: the run's history first
                source = resume.parent
                if (out / "last.pt").exists() and not overwrite:
                    raise SibnetError(f"{out} already holds another run (last.pt): choose another --out to "
                                      f"continue {resume} in, or pass --overwrite")
        elif (out / "last.pt").exists() and not overwrite:
            raise SibnetError(f"{out} already holds a run (last.pt): pass --resume to continue it, "
                              "--overwrite to start again, or choose another --out")
        env = init_distributed(cfg.train.device)
        try:
            configure_determinism(cfg.train.deterministic)
            seed_everything(cfg.train.seed)
            run = build_run(cfg, env, datasets=self.datasets, model=self.model, loss_factory=self.loss_factory)
            if env.distributed:  # same initial weights everywhere (DDP broadcasts rank 0's), own streams
                seed_everything(mix_seed(cfg.train.seed, env.rank))
            state = restore_run(run, ckpt) if ckpt is not None else TrainState()
            if env.is_main:
                if source is not None:
                    copy_run_history(source, out)
                out.mkdir(parents=True, exist_ok=True)
                remove_stale_temporaries(out)
                dump_config(cfg, out / "config.yaml")
            barrier(env)
            logger = RunLogger(out, enabled=env.is_main, purge_step=state.step + 1 if ckpt is not None else None)
            try:
                state = fit(run, state, logger)
            finally:
                logger.close()
            barrier(env)
            self.run, self.state = run, state
            return summary(state, out)
        finally:
            cleanup(env)


def summary(state: TrainState, out: Path) -> dict:
    best = state.best_auroc if math.isfinite(state.best_auroc) else math.nan
    return {"epochs": state.epoch, "steps": state.step, "best_epoch": state.best_epoch, "best_val_auroc": best,
            "stop_reason": state.stop_reason or "finished", "last": str(out / "last.pt"),
            "best": str(out / "best.pt"), "metrics": str(out / "metrics.csv"),
            "tensorboard": str(out / "tensorboard")}
