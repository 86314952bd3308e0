"""Build a :class:`~sibnet.training.loop.Run` from a :class:`~sibnet.config.Config`.

Each part can be injected instead (datasets, model, loss factory), which is how tests and users
with their own data or network reuse the loop. The real path uses
``sibnet.data.registry.build_dataset``, ``sibnet.models.build_classifier`` (plus
``--pretrained`` weights) and ``sibnet.losses.SIBNetLoss``. A recipe (``train.recipe``) may set dataset options of the
labeled splits and relabel the training and validation sets (:mod:`sibnet.training.recipes`).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn

from ..config import Config, data_seed
from ..errors import ConfigError, SibnetError
from .checkpoint import model_meta
from .distributed import DistEnv
from .loop import Run

LossFactory = Callable[..., Callable]


def _plain(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def build_datasets(cfg: Config) -> tuple[Any, Any, Any]:
    """(train, val, unlabeled) datasets of the config; ``val``/``unlabeled`` may be None."""
    from ..data.registry import build_dataset
    from .recipes import build_recipe

    d = cfg.data
    recipe = build_recipe(cfg)
    options = recipe.data_options(d.name, dict(d.options)) if recipe is not None else d.options
    common = dict(root=d.root, image_size=d.image_size, fold=d.fold, folds=d.folds, seed=data_seed(cfg))
    train = build_dataset(d.name, split=d.train_split, **common, **options)
    val = build_dataset(d.name, split=d.val_split, **common, **options) if d.val_split else None
    if recipe is not None:
        train, val = recipe.prepare(train, val)
    unlabeled = None
    u = cfg.unlabeled
    if u.enabled:
        if u.name is None:
            unlabeled = build_dataset(d.name, split=u.split, **common, **{**d.options, **u.options})
        else:
            unlabeled = build_dataset(u.name, root=u.root, split=u.split, image_size=d.image_size,
                                      seed=data_seed(cfg), **u.options)
        if len(unlabeled) == 0:
            raise ConfigError(f"unlabeled: the pool {u.name or d.name}/{u.split} is empty")
    return train, val, unlabeled


def dataset_labels(dataset) -> np.ndarray:
    """(N, K) label matrix for the class weights: the dataset's ``.class_weight_labels`` (e.g. the
    hard labels of soft targets) or ``.labels`` when it has one, else read item by item."""
    labels = getattr(dataset, "class_weight_labels", None)
    if labels is None:
        labels = getattr(dataset, "labels", None)
    if labels is not None:
        return np.asarray(labels, dtype=np.float32)
    return np.stack([np.asarray(dataset[i]["label"], dtype=np.float32) for i in range(len(dataset))])


def sibnet_loss_factory(net: nn.Module, cfg: Config, task: str, class_weight) -> Callable:
    """The configured :class:`sibnet.losses.SIBNetLoss` (the real training path)."""
    from ..losses import SIBNetLoss

    c = cfg.loss
    return SIBNetLoss(net, saliency=c.saliency, lambda_cd=c.lambda_cd, lambda_sc=c.lambda_sc, task=task,
                      class_weight=class_weight, use_cd=c.use_cd, use_sc=c.use_sc, embed=c.embed,
                      embed_grad=c.embed_grad, normalise=c.normalise, radius=c.radius,
                      threshold=c.threshold, background_cluster=c.background_cluster, embed_size=c.embed_size,
                      sc_resolution=c.sc_resolution, sc_scale=c.sc_scale, saliency_options=dict(c.saliency_options) or None,
                      balance=c.balance, balance_momentum=c.balance_momentum, cd_space=c.cd_space, cd_abs=c.cd_abs,
                      contrast=c.contrast)


# saliency methods whose maps are computed correctly under autocast (the relevance rules of
# DeepTaylor/LRP run custom backward functions that need fp32 inputs and weights)
AUTOCAST_SALIENCY = (None, "gradcam")


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


def build_run(cfg: Config, env: DistEnv, *, datasets: tuple | None = None, model: nn.Module | None = None,
              loss_factory: LossFactory | None = None) -> Run:
    """Datasets, model (+pretrained weights, DDP), loss, optimizer, scheduler and scaler."""
    train, val, unlabeled = datasets if datasets is not None else build_datasets(cfg)
    info = getattr(train, "info", None)
    if info is None:
        raise SibnetError("the training dataset has no .info (DatasetInfo); see sibnet.data.base")
    if len(train) == 0:
        raise SibnetError(f"the training split {cfg.data.train_split!r} of {cfg.data.name!r} is empty")
    from .recipes import build_recipe

    recipe = build_recipe(cfg)
    if recipe is not None:  # the sets as the recipe's steps see them (no-op where build_datasets did it)
        train, val = recipe.prepare(train, val)
    if unlabeled is not None and (cfg.loss.saliency is None or not (cfg.loss.use_cd or cfg.loss.use_sc)):
        raise ConfigError("unlabeled.enabled: an unlabeled pool needs the saliency terms "
                          "(loss.saliency set and loss.use_cd or loss.use_sc true)")
    model_name = cfg.model.name
    if model is None:
        from ..models.classifier import build_classifier

        kwargs = {"dropout": cfg.model.dropout} if model_name == "densenet121" else {}
        model = build_classifier(model_name, info.in_channels, info.num_classes, **kwargs)
        if cfg.model.pretrained:
            from ..models.pretrained import load_pretrained

            load_pretrained(model, cfg.model.pretrained, model_name)
    else:
        model_name = getattr(model, "model_name", type(model).__name__)
    model.to(env.device)
    net = model
    if env.distributed:
        from torch.nn.parallel import DistributedDataParallel as DDP

        net = DDP(model, device_ids=[env.device.index] if env.device.type == "cuda" else None)
    class_weight = None
    if cfg.loss.class_weight:
        from ..losses.classification import class_weights_from_labels

        class_weight = torch.as_tensor(class_weights_from_labels(dataset_labels(train), info.task,
                                                                 class_names=info.class_names),
                                       dtype=torch.float32, device=env.device)
    factory = loss_factory or sibnet_loss_factory
    loss_fn = factory(net, cfg, info.task, class_weight)
    o = cfg.optim
    optimizer = torch.optim.Adam(model.parameters(), lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)
    scheduler = None
    if o.scheduler == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.train.epochs)
    elif o.scheduler == "step":
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=o.step_size, gamma=o.gamma)
    dtype = amp_dtype(cfg.train.precision, env.device, cfg.loss.saliency)
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    meta = model_meta(model_name=model_name, info=info, image_size=cfg.data.image_size,
                      normalisation=_plain(getattr(train, "normalize", None)), dataset=cfg.data.name,
                      saliency=cfg.loss.saliency)
    from ..data.transforms import worker_init

    return Run(cfg=cfg, env=env, model=model, net=net, loss_fn=loss_fn, optimizer=optimizer, train_set=train,
               val_set=val, unlabeled_set=unlabeled, task=info.task, meta=meta, scheduler=scheduler,
               scaler=scaler, amp_dtype=dtype, worker_init_fn=worker_init, recipe=recipe)
