"""Training recipes: schedules that change what the training steps see, plugged into the loop.

``train.recipe`` picks one (``null``: plain training), ``train.recipe_options`` configures it. A
recipe is an object with four hooks, each a no-op in :class:`Recipe`:

* ``data_options(name, options)``: dataset options of the labeled splits (``build_datasets``);
* ``prepare(train, val)``: the training and validation sets as the loop sees them (``build_run``
  and ``build_datasets``; idempotent);
* ``start(run, state)``: once at the start (or resumption) of :func:`sibnet.training.loop.fit`;
* ``batch(run, state, batch) -> (batch, logs)``: before every optimizer step; a pure function of
  the :class:`~sibnet.training.loop.TrainState` (epoch, step), so a resumed run sees the same
  stages as an uninterrupted one. ``logs`` join the step's loss terms (epoch rows: their means).

``pham``: Pham et al. 2020 (arXiv:1911.06475), as three parts
------------------------------------------------------------------
1. Stage 1, conditional training (steps ``1..S``): a child label's BCE term counts only for the
   images whose parent labels (its direct parents in ``hierarchy`` that the dataset has) are all
   positive, so the child is learned as P(child | parents = 1); a label without a parent among
   the dataset's labels (a root) uses every image. Implemented by setting the other child targets
   to ``nan``, which :func:`sibnet.losses.classification.weighted_bce` masks (its mean runs over
   the terms that count). "Positive" is a target > 0.5: a certain 1 or a smoothed uncertain label.
2. Stage 2 (steps ``S+1..``): all images, the plain weighted BCE, the whole network trained with
   the same optimizer (Pham et al. retrain only the classifier layer; here the study's budget is
   the baseline's, the loop stays one optimizer and one set of parameters, and the backbone adapts
   to the unconditional child tasks instead of keeping the features of the masked stage).
   ``S = round(stage1 x B)`` where ``B`` is the budget in optimizer steps, ``min(max_steps, epochs
   x batches per epoch)``; ``stage1_epochs``/``stage1_steps`` (``stage1`` times ``train.epochs``
   / ``train.max_steps``) are fixed when the configuration is read (:mod:`sibnet.recipe_options`)
   and written to its ``config.yaml``, so a job trained epoch by epoch keeps one split; ``S`` may fall inside an
   epoch. Metrics: ``train_stage`` (mean stage over the epoch's steps: 1, 2, or in between).
3. U-LSR (the U-Ones variant): every uncertain training label (``-1``) becomes a soft target drawn
   uniformly from ``lsr_range`` (default [0.55, 0.85]), one draw per (image, label) of the training
   split from ``numpy.random.default_rng(train.seed)`` (:func:`sibnet.data.chexpert.apply_policy`),
   fixed for the run. Class weights ``N_neg/N_pos`` count uncertain labels as positive (U-Ones).
   Uncertain validation labels are masked (``nan``), as in the evaluation. A dataset reports
   uncertain labels as ``-1`` (CheXpert with ``uncertainty: keep``, the synthetic set with
   ``uncertain_rate > 0``); under ``pham`` a CheXpert training pool whose ``uncertainty`` option is
   not set is read with ``keep``. Without ``-1`` labels (NIH) U-LSR does nothing.

``hierarchy``: ``"chexpert"`` (default: Lung Opacity -> Edema, Consolidation, Pneumonia, Lung Lesion,
Atelectasis; Enlarged Cardiomediastinum -> Cardiomegaly; Consolidation -> Pneumonia), restricted to
the dataset's labels, or a mapping parent -> list of children whose names must all be labels of the
dataset. A child whose parents are absent from the dataset is trained unconditionally in stage 1,
and the run warns naming it. On the five CheXpert competition findings (NIH ``chexpert5``, the
synthetic set) no parent is present: the recipe reduces to U-LSR plus the two-stage schedule, whose
stages then train the same loss.
"""

from __future__ import annotations

import inspect
import json
import math
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..data.chexpert import apply_policy
from ..data.registry import loader_class
from ..errors import ConfigError
from ..recipe_options import KEY, check_acyclic, pham_options
from .labels import dataset_labels
from .loop import batches_per_epoch

CHEXPERT_HIERARCHY = {
    "Lung Opacity": ("Edema", "Consolidation", "Pneumonia", "Lung Lesion", "Atelectasis"),
    "Enlarged Cardiomediastinum": ("Cardiomegaly",),
    "Consolidation": ("Pneumonia",),
}
_WARNED: set[str] = set()  # a job builds its run once per epoch: warn once per process


def _warn_once(message: str) -> None:
    if message not in _WARNED:
        _WARNED.add(message)
        warnings.warn(message, stacklevel=3)


# ------------------------------------------------------------------ functional core

def uncertain_soft_targets(labels, lsr_range=(0.55, 0.85), seed: int = 0) -> np.ndarray:
    """U-LSR: the ``-1`` entries of ``labels`` (N, K) replaced by uniform draws from ``lsr_range``
    (one per entry, ``numpy.random.default_rng(seed)``); other entries (0, 1, soft, nan) kept."""
    return apply_policy(np.asarray(labels, dtype=np.float32), "ones-lsr", tuple(lsr_range), seed)


def resolve_hierarchy(tree, class_names, strict: bool = False) -> tuple[dict[int, tuple[int, ...]], dict]:
    """``{child index: (parent indices)}`` of the labels in ``class_names`` that have a parent among
    them, and a report ``{"unconditional": [children without any parent present], "partial":
    {child: [absent parents]}}``. ``strict``: every name in ``tree`` must be a class name."""
    names = list(class_names)
    parents: dict[str, list[str]] = {}
    for parent, children in tree.items():
        for child in children:
            parents.setdefault(child, []).append(parent)
    if strict:
        unknown = sorted({n for n in [*tree, *parents] if n not in names})
        if unknown:
            raise ConfigError(f"{KEY}.hierarchy: {', '.join(map(repr, unknown))} not among the dataset's labels "
                              f"({', '.join(names)})")
    check_acyclic(parents)
    out, report = {}, {"unconditional": [], "partial": {}}
    for child in names:
        if child not in parents:
            continue
        present = [p for p in parents[child] if p in names]
        absent = [p for p in parents[child] if p not in names]
        if present:
            out[names.index(child)] = tuple(names.index(p) for p in present)
            if absent:
                report["partial"][child] = absent
        else:
            report["unconditional"].append(child)
    return out, report


def conditional_targets(targets: torch.Tensor, parents: dict[int, tuple[int, ...]]) -> torch.Tensor:
    """Stage-1 targets: a child's entry is ``nan`` (masked) where not all its parents are > 0.5."""
    out = targets.clone()
    nan = torch.full_like(targets[:, 0], math.nan)
    for child, ps in parents.items():
        positive = (targets[:, list(ps)] > 0.5).all(dim=1)  # nan > 0.5 is False
        out[:, child] = torch.where(positive, targets[:, child], nan)
    return out


def stage1_steps(options: dict, batches_per_epoch: int) -> int:
    """``S``: the optimizer steps of stage 1, ``round(min(stage1_steps, stage1_epochs x batches))``."""
    caps = [float(options["stage1_steps"])] if options.get("stage1_steps") is not None else []
    if options.get("stage1_epochs") is not None:
        caps.append(float(options["stage1_epochs"]) * batches_per_epoch)
    return int(math.floor(min(caps) + 0.5)) if caps else 0


# ------------------------------------------------------------------ datasets with other labels

class Relabeled(Dataset):
    """``dataset`` whose items carry ``labels[i]`` instead of their own label (all else kept).

    ``class_weight_labels``: the matrix class weights are counted on
    (:func:`sibnet.training.labels.dataset_labels` prefers it), e.g. the hard labels of soft targets.
    """

    def __init__(self, dataset, labels: np.ndarray, class_weight_labels: np.ndarray | None = None):
        self.dataset = dataset
        self.labels = np.asarray(labels, dtype=np.float32)
        self.class_weight_labels = self.labels if class_weight_labels is None else class_weight_labels
        self.info = dataset.info
        self.smoothed = 0  # entries whose target a recipe smoothed
        for name in ("patients", "normalize"):
            if hasattr(dataset, name):
                setattr(self, name, getattr(dataset, name))

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        item = dict(self.dataset[index])
        item["label"] = torch.from_numpy(self.labels[index].copy())
        return item


# ------------------------------------------------------------------ recipes

class Recipe:
    """Plain training: every hook leaves things as they are."""

    name = "plain"

    def data_options(self, name: str, options: dict) -> dict:
        return options

    def prepare(self, train, val):
        return train, val

    def start(self, run, state) -> None:
        pass

    def batch(self, run, state, batch: dict) -> tuple[dict, dict]:
        return batch, {}


class PhamRecipe(Recipe):
    """Pham et al. 2020: conditional stage, fine-tuning stage, U-LSR (see the module doc)."""

    name = "pham"

    def __init__(self, cfg):
        self.options = pham_options(dict(cfg.train.recipe_options), cfg.train.epochs, cfg.train.max_steps)
        self.seed = int(cfg.train.seed)
        self.parents: dict[int, tuple[int, ...]] | None = None
        self.report: dict = {}
        self.uncertain = 0
        self.s1: int | None = None

    # -- data
    def data_options(self, name: str, options: dict) -> dict:
        takes = "uncertainty" in inspect.signature(loader_class(name).__init__).parameters
        return {**options, "uncertainty": "keep"} if takes and "uncertainty" not in options else options

    def prepare(self, train, val):
        if train.info.task != "multilabel":
            raise ConfigError(f"train.recipe: 'pham' needs a multi-label dataset; {train.info.name!r} is "
                              f"{train.info.task}")
        self._hierarchy(train.info.class_names)
        if not isinstance(train, Relabeled):
            y = dataset_labels(train)
            unc = y == -1
            train = Relabeled(train, uncertain_soft_targets(y, self.options["lsr_range"], self.seed),
                              class_weight_labels=np.where(unc, np.float32(1), y))
            train.smoothed = int(unc.sum())
        self.uncertain = train.smoothed
        if val is not None and not isinstance(val, Relabeled):
            y = dataset_labels(val)
            val = Relabeled(val, np.where(y == -1, np.float32(np.nan), y))
        return train, val

    def _hierarchy(self, class_names) -> None:
        h = self.options["hierarchy"]
        custom = not isinstance(h, str)
        tree = h if custom else CHEXPERT_HIERARCHY
        self.parents, self.report = resolve_hierarchy(tree, class_names, strict=custom)
        if self.report["unconditional"]:
            absent = sorted({p for c in self.report["unconditional"] for p in tree if c in tree[p]})
            _warn_once(f"recipe pham: {', '.join(self.report['unconditional'])} have no parent label among the "
                       f"dataset's labels ({', '.join(absent)} absent): trained unconditionally in stage 1")
        for child, absent in self.report["partial"].items():
            _warn_once(f"recipe pham: {child} is conditioned on its parents present in the dataset only "
                       f"({', '.join(absent)} absent)")
        if not self.parents:
            _warn_once("recipe pham: no label has a parent among the dataset's labels: stage 1 trains the plain "
                       "weighted BCE (the recipe reduces to U-LSR and the two-stage schedule)")

    # -- loop
    def start(self, run, state) -> None:
        self.s1 = stage1_steps(self.options, batches_per_epoch(run))
        names = list(run.train_set.info.class_names)
        if run.env.is_main:
            desc = {"recipe": self.name, "stage1_steps": self.s1, "options": self.options,
                    "conditional": {names[c]: [names[p] for p in ps] for c, ps in (self.parents or {}).items()},
                    "unconditional": self.report.get("unconditional", []),
                    "uncertain_labels_smoothed": self.uncertain, "lsr_seed": self.seed}
            Path(run.out).mkdir(parents=True, exist_ok=True)
            (Path(run.out) / "recipe.json").write_text(json.dumps(desc, indent=1))

    def stage(self, step: int) -> int:
        """1 for the optimizer steps ``1..S`` (``step`` = steps already taken < S), else 2."""
        return 1 if step < self.s1 else 2

    def batch(self, run, state, batch: dict) -> tuple[dict, dict]:
        if self.s1 is None:
            self.start(run, state)
        stage = self.stage(state.step)
        if stage == 1 and self.parents:
            batch = {**batch, "label": conditional_targets(batch["label"].float(), self.parents)}
        if state.step == self.s1 and self.s1 > 0 and run.env.is_main:
            print(f"recipe pham: stage 2 (fine-tuning on all data) from optimizer step {self.s1 + 1}", file=sys.stderr)
        return batch, {"stage": float(stage)}


RECIPES = {"pham": PhamRecipe}


def build_recipe(cfg) -> Recipe | None:
    """The configured recipe object (None: plain training)."""
    return None if cfg.train.recipe is None else RECIPES[cfg.train.recipe](cfg)
