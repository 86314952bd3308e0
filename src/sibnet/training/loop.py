"""The training loop: functional core (:func:`train_step`, :func:`validate`, :func:`fit`) over a
:class:`Run` (everything built from the config by :mod:`sibnet.training.build`).

Conventions
-----------
* One optimizer step per labeled batch; with an unlabeled pool (SIBNet+) every ``unlabeled.every``-th
  step also adds ``unlabeled.weight`` x the loss of one unlabeled batch (``loss_fn(x, None)``:
  saliency terms only) before the single backward, so DDP all-reduces gradients once per step.
* The labeled order of epoch ``e`` is a pure function of ``(train.seed, e)`` (see
  :mod:`.sampling`); dataset augmenters (``.augment`` with ``set_random_state``) are reseeded from
  ``(seed, epoch, rank)`` at the start of each epoch. Training batches of a rank's last incomplete
  batch are dropped (BatchNorm cannot train on a batch of one).
* After every epoch (and every ``train.checkpoint_every`` steps) rank 0 writes ``last.pt``
  atomically; ``best.pt`` when the validation AUROC improved by more than ``train.min_delta``.
  The checkpoint holds model, optimizer, scheduler, scaler, the RNG states of every rank, the
  augmenters' states and the :class:`TrainState`, so a resumed run continues exactly. Resuming
  from a mid-epoch checkpoint is exact with ``data.num_workers: 0`` (with workers, augmentation
  draws depend on which worker loads a batch); resuming from an epoch end is exact either way.
  Resuming with another number of processes continues the run, but not bit for bit. The
  ``last.pt`` that a checkpoint write replaces stays as ``last.prev.pt`` (a fallback should the
  newer file ever be damaged).
* A non-finite loss (NaN/inf, checked on the total; the terms are inspected only then) stops the
  run with a message naming the step and the term (``train.nonfinite: stop``, the default; no
  optimizer step is taken, so ``last.pt`` stays the last good checkpoint), or skips that step
  (``skip``: no optimizer step; the step still counts towards ``train.max_steps``; the epoch's
  ``skipped_steps`` go to ``metrics.csv``). On several processes the ranks agree on it.
* A recipe (``train.recipe``, :mod:`.recipes`) may change each labeled batch before its step
  (e.g. the targets of a training stage); its hook depends only on the :class:`TrainState`, and
  the values it logs (e.g. ``stage``) join the loss terms in the step and epoch logs.
* Early stopping: stop after ``train.patience`` epochs without improvement of the mean validation
  AUROC (:func:`sibnet.evaluation.classification.mean_auroc`, gathered over all ranks so every
  rank takes the same decision). An epoch whose AUROC is nan never counts as an improvement,
  except that the first epoch always gives a ``best.pt``. Without a validation split
  (``data.val_split: null``) there is no early stopping and ``best.pt`` is the latest epoch.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from ..config import Config
from ..errors import SibnetError
from ..evaluation.batchnorm import recalibrate_batchnorm
from ..evaluation.classification import mean_auroc
from ..evaluation.run import probabilities
from .checkpoint import FORMAT, VERSION, save_checkpoint
from .collapse import collapse_metrics, collapse_warning
from .distributed import DistEnv, all_gather_objects, all_reduce_sum, sync_buffers
from .logs import RunLogger
from .rng import capture_rng, mix_seed, restore_rng
from .sampling import EpochSampler, StreamBatchSampler, shard, unshard

TERMS = ("total", "wce", "cd", "sc")  # shown on the progress bar
# logged per step and per epoch: the raw terms, each term's share of the total (lambda x term /
# its balance normaliser) and the mean pairwise cosine of the batch's class maps
LOGGED = TERMS + ("wce_w", "cd_w", "sc_w", "map_cos")


@dataclass
class TrainState:
    epoch: int = 0  # completed epochs
    step: int = 0  # optimizer steps taken
    batch_in_epoch: int = 0  # labeled batches already taken in the running epoch
    unlabeled_batches: int = 0
    best_auroc: float = -math.inf
    best_epoch: int = 0  # 1-based epoch of best.pt; 0: none yet
    bad_epochs: int = 0
    stop_reason: str = ""
    history: list = field(default_factory=list)
    running: dict = field(default_factory=dict)  # sums of the running epoch's loss terms + "count"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainState":
        return cls(**data)


@dataclass
class Run:
    cfg: Config
    env: DistEnv
    model: nn.Module  # the bare model (weights saved from here)
    net: nn.Module  # what the loss calls: DDP-wrapped on several ranks, else ``model``
    loss_fn: Callable
    optimizer: torch.optim.Optimizer
    train_set: Any
    val_set: Any = None
    unlabeled_set: Any = None
    task: str = "multilabel"
    meta: dict = field(default_factory=dict)
    scheduler: Any = None
    scaler: Any = None
    amp_dtype: torch.dtype | None = None
    worker_init_fn: Callable | None = None
    recipe: Any = None  # a sibnet.training.recipes.Recipe (hooks at the start and before every step)

    @property
    def out(self) -> Path:
        return Path(self.cfg.out)


# ------------------------------------------------------------------ helpers

def _augmenters(dataset) -> list:
    out, ds = [], dataset
    while ds is not None:
        aug = getattr(ds, "augment", None)
        if aug is not None and hasattr(aug, "set_random_state") and hasattr(aug, "rng"):
            out.append(aug)
        ds = getattr(ds, "dataset", None)
    return out


def _to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    return x.to(device, non_blocking=device.type == "cuda")


def _autocast(run: Run):
    if run.amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(run.env.device.type, dtype=run.amp_dtype)


def train_sampler(run: Run, epoch: int) -> EpochSampler:
    cfg = run.cfg
    sampler = EpochSampler(run.train_set, num_replicas=run.env.world_size, rank=run.env.rank,
                           seed=cfg.train.seed, shuffle=True)
    sampler.set_epoch(epoch)
    return sampler


def batches_per_epoch(run: Run) -> int:
    n = train_sampler(run, 0).num_samples
    b = run.cfg.data.batch_size
    return n // b if n >= b else 1


def train_loader(run: Run, epoch: int, start_batch: int = 0) -> DataLoader:
    """Labeled batches of ``epoch`` for this rank, from batch ``start_batch`` on."""
    cfg = run.cfg
    sampler = train_sampler(run, epoch)
    b = cfg.data.batch_size
    sampler.set_start(start_batch * b)
    return DataLoader(run.train_set, batch_size=b, sampler=sampler, drop_last=sampler.num_samples >= b,
                      num_workers=cfg.data.num_workers, worker_init_fn=run.worker_init_fn,
                      generator=torch.Generator().manual_seed(mix_seed(cfg.train.seed, epoch, run.env.rank)),
                      pin_memory=run.env.device.type == "cuda")


def unlabeled_batches(run: Run, start: int):
    cfg = run.cfg
    sampler = StreamBatchSampler(len(run.unlabeled_set), cfg.unlabeled.batch_size or cfg.data.batch_size,
                                 seed=mix_seed(cfg.train.seed, 1), rank=run.env.rank,
                                 num_replicas=run.env.world_size, start=start)
    return iter(DataLoader(run.unlabeled_set, batch_sampler=sampler, num_workers=cfg.data.num_workers,
                           worker_init_fn=run.worker_init_fn,
                           generator=torch.Generator().manual_seed(mix_seed(cfg.train.seed, 2, start)),
                           pin_memory=run.env.device.type == "cuda"))


# ------------------------------------------------------------------ one step, validation

class NonFiniteLoss(SibnetError):
    """A loss term went NaN or infinite (``train.nonfinite: stop``); ``.terms`` maps the terms to values."""

    def __init__(self, terms: dict[str, float]):
        self.terms = terms
        super().__init__(f"the loss went non-finite in {', '.join(f'{k} ({v})' for k, v in terms.items())}")


def _nonfinite(run: Run, total: float) -> bool:
    """Whether this step's loss is NaN/inf on any rank (all ranks then skip or stop together)."""
    bad = not math.isfinite(total)
    if run.env.distributed:
        bad = all_reduce_sum({"nonfinite": float(bad)}, run.env)["nonfinite"] > 0
    return bad


def _one_line_errors(batches):
    """The batches of a DataLoader; a SibnetError that a worker process raised (which the DataLoader
    re-raises with the worker's traceback as its message) keeps only its own one-line message."""
    it = iter(batches)
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return
        except SibnetError as exc:
            lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
            if len(lines) < 2:
                raise
            prefix = f"{type(exc).__module__}.{type(exc).__name__}: "
            raise type(exc)(lines[-1][len(prefix):] if lines[-1].startswith(prefix) else lines[-1]) from None
        yield batch


def _accumulate(state: TrainState, logs: dict[str, float]) -> None:
    """Add a step's logged values to the running epoch sums (a skipped step only to its count)."""
    if logs.get("skipped_steps"):
        state.running["skipped_steps"] = state.running.get("skipped_steps", 0) + 1
        return
    for k, v in logs.items():
        state.running[k] = state.running.get(k, 0.0) + v
    state.running["count"] = state.running.get("count", 0) + 1


def train_step(run: Run, batch: dict, unlabeled: dict | None = None) -> dict[str, float]:
    """One optimizer step on a labeled batch (plus an unlabeled one); returns the loss terms."""
    device = run.env.device
    x, y = _to_device(batch["image"], device), _to_device(batch["label"], device)
    run.optimizer.zero_grad(set_to_none=True)
    with _autocast(run):
        total, terms = run.loss_fn(x, y)
        logs = {k: float(terms[k]) for k in LOGGED if k in terms}
        if unlabeled is not None:
            u_total, u_terms = run.loss_fn(_to_device(unlabeled["image"], device), None)
            total = total + run.cfg.unlabeled.weight * u_total
            logs.update({f"unlabeled_{k}": float(u_terms[k]) for k in ("cd", "sc", "total") if k in u_terms})
    logs["total"] = float(total.detach())
    if _nonfinite(run, logs["total"]):
        if run.cfg.train.nonfinite == "stop":
            bad = {k: v for k, v in logs.items() if k != "total" and not math.isfinite(v)}
            raise NonFiniteLoss(bad or {"total": logs["total"]})
        run.optimizer.zero_grad(set_to_none=True)
        return {"skipped_steps": 1.0}
    clip = run.cfg.optim.grad_clip
    if run.scaler is not None:
        run.scaler.scale(total).backward()
        if clip:
            run.scaler.unscale_(run.optimizer)
            torch.nn.utils.clip_grad_norm_(run.model.parameters(), clip)
        run.scaler.step(run.optimizer)
        run.scaler.update()
    else:
        total.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(run.model.parameters(), clip)
        run.optimizer.step()
    return logs


@torch.no_grad()
def predict(model: nn.Module, loader, device: torch.device, task: str,
            amp_dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Probabilities (:func:`sibnet.evaluation.run.probabilities`) and labels, on the CPU, of a (sharded)
    loader under the run's autocast; :func:`sibnet.evaluation.run.predict` is the whole-dataset twin
    with image ids that evaluation uses."""
    was_training = model.training
    model.eval()
    probs, labels = [], []
    try:
        for batch in _one_line_errors(loader):
            x = _to_device(batch["image"], device)
            ctx = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else contextlib.nullcontext()
            with ctx:
                logits = model(x)
            probs.append(probabilities(logits, task).cpu())
            labels.append(batch["label"].float().cpu())
    finally:
        model.train(was_training)
    if not probs:
        return torch.empty(0), torch.empty(0)
    return torch.cat(probs), torch.cat(labels)


def validate(run: Run) -> float:
    """Mean validation AUROC over all ranks' shards (the same value on every rank)."""
    if run.val_set is None or len(run.val_set) == 0:
        return math.nan
    env = run.env
    part = Subset(run.val_set, shard(len(run.val_set), env.rank, env.world_size))
    loader = DataLoader(part, batch_size=run.cfg.data.batch_size, shuffle=False,
                        num_workers=run.cfg.data.num_workers)
    probs, labels = predict(run.model, loader, env.device, run.task, run.amp_dtype)
    gathered = all_gather_objects((probs, labels), env)
    gathered = [g for g in gathered if g[0].numel()]
    probs = unshard([g[0] for g in gathered])
    labels = unshard([g[1] for g in gathered])
    if run.task == "multiclass":  # one-vs-rest on one-hot labels
        labels = torch.where(torch.isnan(labels), labels, (labels > 0.5).float())
    return float(mean_auroc(probs.numpy(), labels.numpy()))


def update_early_stopping(state: TrainState, auroc: float, min_delta: float) -> bool:
    """Record an epoch's validation AUROC; True when it is the new best."""
    improved = state.best_epoch == 0 or (not math.isnan(auroc) and auroc > state.best_auroc + min_delta)
    if improved:
        state.best_auroc = auroc if not math.isnan(auroc) else -math.inf
        state.best_epoch = state.epoch
        state.bad_epochs = 0
    else:
        state.bad_epochs += 1
    return improved


# ------------------------------------------------------------------ checkpoints

def checkpoint_payload(run: Run, state: TrainState) -> dict | None:
    """Collective over the ranks (RNG states gathered); the payload on rank 0, None elsewhere."""
    rng = all_gather_objects({"global": capture_rng(),
                              "augment": [a.rng.bit_generator.state for a in _augmenters(run.train_set)]},
                             run.env)
    if not run.env.is_main:
        return None
    return {
        "format": FORMAT, "version": VERSION,
        "model": run.model.state_dict(),
        "meta": run.meta,
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict() if run.scheduler is not None else None,
        "scaler": run.scaler.state_dict() if run.scaler is not None else None,
        "rng": rng,
        "loss": run.loss_fn.state_dict() if isinstance(run.loss_fn, nn.Module) else None,
        "state": state.to_dict(),
        "config": run.cfg.to_dict(),
    }


def save_run(run: Run, state: TrainState, best: bool = False) -> None:
    payload = checkpoint_payload(run, state)
    if payload is not None:
        save_checkpoint(run.out / "last.pt", payload, keep_previous=True)
        if best:
            save_checkpoint(run.out / "best.pt", payload)


def restore_run(run: Run, ckpt: dict) -> TrainState:
    """Load model, optimizer, scheduler, scaler and this rank's RNG states from a checkpoint."""
    run.model.load_state_dict(ckpt["model"])
    run.optimizer.load_state_dict(ckpt["optimizer"])
    if run.scheduler is not None and ckpt.get("scheduler") is not None:
        run.scheduler.load_state_dict(ckpt["scheduler"])
    if run.scaler is not None and ckpt.get("scaler") is not None:
        run.scaler.load_state_dict(ckpt["scaler"])
    if isinstance(run.loss_fn, nn.Module) and ckpt.get("loss"):  # e.g. the loss balance's normalisers
        run.loss_fn.load_state_dict(ckpt["loss"], strict=False)
    states = ckpt.get("rng") or []
    if len(states) == run.env.world_size:
        mine = states[run.env.rank]
        restore_rng(mine["global"])
        for aug, st in zip(_augmenters(run.train_set), mine.get("augment", [])):
            aug.rng.bit_generator.state = st
    return TrainState.from_dict(ckpt["state"])


# ------------------------------------------------------------------ the loop

def _finished(run: Run, state: TrainState) -> bool:
    t = run.cfg.train
    return bool(state.stop_reason) or state.epoch >= t.epochs or (t.max_steps is not None and state.step >= t.max_steps)


def _progress(run: Run, total: int, initial: int, epoch: int):
    return tqdm(total=total, initial=initial, desc=f"epoch {epoch + 1}/{run.cfg.train.epochs}",
                unit="batch", dynamic_ncols=True, leave=True, file=sys.stderr,
                disable=not (run.env.is_main and run.cfg.train.progress and sys.stderr.isatty()))


def _means(running: dict) -> dict[str, float]:
    n = running.get("count", 0)
    return {k: v / n for k, v in running.items() if k not in ("count", "skipped_steps")} if n else {}


def fit(run: Run, state: TrainState | None = None, logger: RunLogger | None = None) -> TrainState:
    """Train until ``train.epochs``, ``train.max_steps`` or early stopping; returns the final state."""
    cfg, env = run.cfg, run.env
    state = state or TrainState()
    logger = logger or RunLogger(run.out, enabled=False)
    n_batches = batches_per_epoch(run)
    u_iter = unlabeled_batches(run, state.unlabeled_batches) if run.unlabeled_set is not None else None
    if run.recipe is not None:
        run.recipe.start(run, state)
    run.model.train()
    while not _finished(run, state):
        epoch, started = state.epoch, time.perf_counter()
        if state.batch_in_epoch == 0:
            for i, aug in enumerate(_augmenters(run.train_set)):
                aug.set_random_state(mix_seed(cfg.train.seed, epoch, env.rank, i))
            state.running = {}
        bar = _progress(run, n_batches, state.batch_in_epoch, epoch)
        for batch in _one_line_errors(train_loader(run, epoch, state.batch_in_epoch)):
            u_batch = None
            if u_iter is not None and state.step % cfg.unlabeled.every == 0:
                u_batch = next(u_iter)
                state.unlabeled_batches += 1
            extra = {}
            if run.recipe is not None:  # a pure function of (state, batch): resumed runs see the same
                batch, extra = run.recipe.batch(run, state, batch)
            try:
                logs = {**train_step(run, batch, u_batch), **extra}
            except NonFiniteLoss as exc:
                last = run.out / "last.pt"
                raise SibnetError(f"training stopped at step {state.step + 1} (epoch {epoch + 1}, batch "
                                  f"{state.batch_in_epoch + 1}): {exc}; " + (f"{last} stays the last good checkpoint"
                                  if last.is_file() else "no checkpoint was written yet") + "; lower optim.lr or "
                                  "the lambdas, or set train.nonfinite=skip to skip such steps") from None
            state.step += 1
            state.batch_in_epoch += 1
            _accumulate(state, logs)
            bar.update(1)
            bar.set_postfix({k: f"{v:.4g}" for k, v in _means(state.running).items() if k in TERMS})
            if state.step % cfg.train.log_every == 0:
                logger.scalars(state.step, logs, "train_step/")
            if cfg.train.max_steps is not None and state.step >= cfg.train.max_steps:
                break
            if cfg.train.checkpoint_every and state.step % cfg.train.checkpoint_every == 0 \
                    and state.batch_in_epoch < n_batches:
                save_run(run, state)
        bar.close()
        _end_epoch(run, state, logger, time.perf_counter() - started)
    return state


def _end_epoch(run: Run, state: TrainState, logger: RunLogger, seconds: float) -> None:
    cfg = run.cfg
    sums = all_reduce_sum({"skipped_steps": 0.0, **{k: float(v) for k, v in state.running.items()}}, run.env)
    skipped = int(sums.pop("skipped_steps"))
    means = _means(sums)
    if means and not math.isfinite(means.get("total", 0.0)):
        raise SibnetError(f"training diverged in epoch {state.epoch + 1}: mean loss {means.get('total')} "
                          f"(terms {means}); lower optim.lr or the lambdas")
    if cfg.train.bn_stats == "train":  # the same images and order on every rank: the same statistics
        recalibrate_batchnorm(run.model, run.train_set, batch_size=max(2, cfg.data.batch_size),
                              seed=cfg.train.seed, name="the training split")
    sync_buffers(run.model, run.env)
    auroc = validate(run)
    maps = {}
    if cfg.train.watch_maps:  # the same images on every rank: the same figures
        maps = collapse_metrics(run.model, run.loss_fn, run.val_set or run.train_set, run.env.device)
        warning = collapse_warning(maps, state.epoch + 1, run.loss_fn)
        if warning and run.env.is_main:
            print(warning, file=sys.stderr)
    state.epoch += 1
    state.batch_in_epoch = 0
    if run.val_set is None:  # no validation: best.pt follows the latest epoch, no early stopping
        improved, state.best_epoch = True, state.epoch
    else:
        improved = update_early_stopping(state, auroc, cfg.train.min_delta)
    if cfg.train.patience is not None and state.bad_epochs >= cfg.train.patience:
        state.stop_reason = f"early stopping: no better validation AUROC for {state.bad_epochs} epochs"
    row = {"epoch": state.epoch, "step": state.step, "lr": run.optimizer.param_groups[0]["lr"],
           **{f"train_{k}": v for k, v in means.items()}, "val_auroc": auroc,
           **{f"val_{k}": v for k, v in maps.items()},
           "best_val_auroc": state.best_auroc, "seconds": round(seconds, 3)}
    if cfg.train.nonfinite == "skip":
        row["skipped_steps"] = skipped
    state.history.append(row)
    state.running = {}
    if run.scheduler is not None:
        run.scheduler.step()
    logger.scalars(state.step, {k: v for k, v in row.items() if k not in ("epoch", "step")}, "epoch/")
    logger.history(state.history)
    save_run(run, state, best=improved)
    if run.env.is_main and cfg.train.progress:
        print(f"epoch {state.epoch}: loss {means.get('total', math.nan):.4g}  val AUROC {auroc:.4f}  "
              f"(best {state.best_auroc:.4f} at epoch {state.best_epoch})", file=sys.stderr)
