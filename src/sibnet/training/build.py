"""Build a :class:`~sibnet.training.loop.Run` from a :class:`~sibnet.config.Config`.

Each part can be injected instead (datasets, model, loss factory), which is how tests and users
with their own data or network reuse the loop. The real path uses
:func:`sibnet.data.registry.build_dataset`, :func:`sibnet.models.build_classifier` (plus
``model.pretrained`` weights) and :class:`sibnet.losses.SIBNetLoss`. A recipe (``train.recipe``)
may set dataset options of the labeled splits and relabel the training and validation sets
(:mod:`sibnet.training.recipes`).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

from ..config import Config, data_seed
from ..data.registry import build_dataset
from ..data.transforms import worker_init
from ..errors import ConfigError, SibnetError
from ..losses import SIBNetLoss
from ..models.classifier import build_classifier
from ..models.pretrained import load_pretrained
from .checkpoint import model_meta
from .distributed import DistEnv
from .labels import dataset_class_weights, dataset_labels
from .loop import Run
from .recipes import build_recipe

# dataset_labels lives in .labels; it stays importable from here for the callers that import it from here
__all__ = ["AUTOCAST_SALIENCY", "LossFactory", "amp_dtype", "build_datasets", "build_model", "build_optimizer",
           "build_run", "build_split", "build_unlabeled", "dataset_labels", "sibnet_loss_factory"]

LossFactory = Callable[..., Callable]

# saliency methods whose maps are computed correctly under autocast (the relevance rules of
# DeepTaylor/LRP run custom backward functions that need fp32 inputs and weights)
AUTOCAST_SALIENCY = (None, "gradcam")


def _plain(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


# ------------------------------------------------------------------ datasets

def build_split(cfg: Config, split: str, options: dict | None = None):
    """The ``split`` of the configured dataset (``data.name``): built with ``data.root``,
    ``data.image_size``, ``data.fold``, ``data.folds``, ``data.held_out_test``, the data seed and
    ``options`` (default ``data.options``)."""
    d = cfg.data
    return build_dataset(d.name, split=split, root=d.root, image_size=d.image_size, fold=d.fold, folds=d.folds,
                         seed=data_seed(cfg), held_out_test=d.held_out_test,
                         **(d.options if options is None else options))


def build_datasets(cfg: Config) -> tuple[Any, Any, Any]:
    """(train, val, unlabeled) datasets of the config; ``val``/``unlabeled`` may be None."""
    d = cfg.data
    recipe = build_recipe(cfg)
    options = recipe.data_options(d.name, dict(d.options)) if recipe is not None else d.options
    train = build_split(cfg, d.train_split, options)
    val = build_split(cfg, d.val_split, options) if d.val_split else None
    if recipe is not None:
        train, val = recipe.prepare(train, val)
    return train, val, build_unlabeled(cfg)


def build_unlabeled(cfg: Config):
    """The unlabeled pool (SIBNet+) of ``unlabeled``, or None when it is not enabled."""
    d, u = cfg.data, cfg.unlabeled
    if not u.enabled:
        return None
    if u.name is None:
        unlabeled = build_split(cfg, u.split, {**d.options, **u.options})
    else:
        unlabeled = build_dataset(u.name, root=u.root, split=u.split, image_size=d.image_size, seed=data_seed(cfg),
                                  **u.options)
    if len(unlabeled) == 0:
        raise ConfigError(f"unlabeled: the pool {u.name or d.name}/{u.split} is empty")
    return unlabeled


def _check_training_set(cfg: Config, train) -> None:
    if getattr(train, "info", None) is None:
        raise SibnetError("the training dataset has no .info (DatasetInfo); see sibnet.data.base")
    if len(train) == 0:
        raise SibnetError(f"the training split {cfg.data.train_split!r} of {cfg.data.name!r} is empty")


def _check_unlabeled(cfg: Config, unlabeled) -> None:
    if unlabeled is not None and (cfg.loss.saliency is None or not (cfg.loss.use_cd or cfg.loss.use_sc)):
        raise ConfigError("unlabeled.enabled: an unlabeled pool needs the saliency terms "
                          "(loss.saliency set and loss.use_cd or loss.use_sc true)")


# ------------------------------------------------------------------ model, loss, optimizer

def build_model(cfg: Config, info) -> nn.Module:
    """The configured classifier (``model``) for the dataset ``info``, with its pretrained weights."""
    name = cfg.model.name
    kwargs = {"dropout": cfg.model.dropout} if name == "densenet121" else {}
    model = build_classifier(name, info.in_channels, info.num_classes, **kwargs)
    if cfg.model.pretrained:
        load_pretrained(model, cfg.model.pretrained, name)
    return model


def sibnet_loss_factory(net: nn.Module, cfg: Config, task: str, class_weight) -> Callable:
    """The configured :class:`sibnet.losses.SIBNetLoss` (the real training path)."""
    return SIBNetLoss(net, cfg.loss, task=task, class_weight=class_weight)


def build_optimizer(cfg: Config, model: nn.Module) -> tuple[torch.optim.Optimizer, Any]:
    """Adam over the model's parameters (``optim``) and its learning-rate scheduler (None: constant)."""
    o = cfg.optim
    optimizer = torch.optim.Adam(model.parameters(), lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)
    scheduler = None
    if o.scheduler == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.train.epochs)
    elif o.scheduler == "step":
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=o.step_size, gamma=o.gamma)
    return optimizer, scheduler


def amp_dtype(precision: str, device: torch.device, saliency: str | None = None) -> torch.dtype | None:
    """The autocast dtype for ``train.precision`` (None: fp32, no autocast).

    ``auto``: bf16 (fp16 where bf16 is unsupported) on CUDA for the baseline and GradCAM, fp32 for
    the relevance methods (their rule denominators are safer in fp32) and on the CPU. An explicit
    bf16/fp16 is honoured for every method (relevance rules run in the dtype each layer ran in).
    """
    amp_ok = saliency in AUTOCAST_SALIENCY
    if precision == "auto":
        if device.type != "cuda" or not amp_ok:
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("train.precision: fp16 needs a CUDA device (use bf16 or fp32 on the CPU)")
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


# ------------------------------------------------------------------ the run

def build_run(cfg: Config, env: DistEnv, *, datasets: tuple | None = None, model: nn.Module | None = None,
              loss_factory: LossFactory | None = None) -> Run:
    """Datasets, model (+pretrained weights, DDP), loss, optimizer, scheduler and scaler of ``cfg``.

    ``datasets`` ``(train, val, unlabeled)``, ``model`` and ``loss_factory`` (called as
    ``loss_factory(net, cfg, task, class_weight)``) replace the configured ones.
    """
    train, val, unlabeled = datasets if datasets is not None else build_datasets(cfg)
    _check_training_set(cfg, train)
    info = train.info
    recipe = build_recipe(cfg)
    if recipe is not None:  # the sets as the recipe's steps see them (no-op where build_datasets did it)
        train, val = recipe.prepare(train, val)
    _check_unlabeled(cfg, unlabeled)
    if model is None:
        model, model_name = build_model(cfg, info), cfg.model.name
    else:
        model_name = getattr(model, "model_name", type(model).__name__)
    model.to(env.device)
    net = model
    if env.distributed:
        net = DistributedDataParallel(model, device_ids=[env.device.index] if env.device.type == "cuda" else None)
    class_weight = dataset_class_weights(train).to(env.device) if cfg.loss.class_weight else None
    loss_fn = (loss_factory or sibnet_loss_factory)(net, cfg, info.task, class_weight)
    optimizer, scheduler = build_optimizer(cfg, model)
    dtype = amp_dtype(cfg.train.precision, env.device, cfg.loss.saliency)
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    meta = model_meta(model_name=model_name, info=info, image_size=cfg.data.image_size,
                      normalisation=_plain(getattr(train, "normalize", None)), dataset=cfg.data.name,
                      saliency=cfg.loss.saliency)
    return Run(cfg=cfg, env=env, model=model, net=net, loss_fn=loss_fn, optimizer=optimizer, train_set=train,
               val_set=val, unlabeled_set=unlabeled, task=info.task, meta=meta, scheduler=scheduler,
               scaler=scaler, amp_dtype=dtype, worker_init_fn=worker_init, recipe=recipe)
