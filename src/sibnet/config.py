"""Training configuration: dataclasses, a YAML file and ``key.sub=value`` overrides.

Conventions
-----------
* A configuration is built in three layers: the dataclass defaults below, then a YAML file
  (``sibnet train --config cfg.yaml``), then command-line overrides ``section.key=value`` whose
  value is parsed as YAML (``train.epochs=3``, ``optim.betas=[0.9,0.999]``, ``loss.saliency=null``).
* Every key is checked: an unknown key, a value of the wrong type, a choice outside its list or a
  dataset/pretrained path that does not exist raises :class:`~sibnet.errors.ConfigError` with a
  one-line message naming the key (and the file it came from).
* ``loss`` is the option table of the loss, :class:`sibnet.loss_options.LossOptions` (each option's
  type, default, check and help, defined once for the configuration and ``SIBNetLoss``).
  ``loss.saliency: null`` (or ``none``) trains the plain baseline (weighted BCE/CE only).
  ``loss.lambda_cd``/``lambda_sc`` left ``null`` take the saliency method's default from the loss.
* ``train.device: auto`` picks CUDA when available; ``train.precision: auto`` means bf16 autocast
  on a CUDA device that supports it (else fp16 with a gradient scaler) for the baseline and
  GradCAM, and fp32 for the relevance methods (DeepTaylor, LRP) and on the CPU.
* ``train.recipe`` (null: plain training; ``pham``: :mod:`sibnet.training.recipes`) changes what
  the training steps see; its options are checked and completed when the configuration is read
  (:mod:`sibnet.recipe_options`, e.g. the stage split of ``pham`` from the budget), so
  ``config.yaml`` records the split used.
* ``configs/default.yaml`` documents every key.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml

from .errors import ConfigError, SibnetError
from .loss_options import LossOptions, check_loss_options
from .recipe_options import check_recipe_options

# datasets that read files and therefore need ``data.root`` (the others are generated in memory)
DATASETS_NEEDING_ROOT = ("chexpert", "nih", "glas", "busi", "medmnist", "csv")
# where a model's BatchNorm statistics come from: as training leaves them, or re-estimated on the
# training images with the final weights (``train.bn_stats``; ``--bn-stats`` of the evaluations)
BnStats = Literal["stored", "train"]
BN_STATS = typing.get_args(BnStats)


@dataclass
class ModelConfig:
    name: Literal["densenet121", "resnet18", "resnet50", "resnet101"] = "densenet121"
    pretrained: Optional[str] = None  # local torchvision-style state dict (.pt/.pth)
    dropout: float = 0.0  # DenseNet only


# the ``loss`` section is the option table of SIBNetLoss, LossOptions (the name LossConfig stays for its users)
LossConfig = LossOptions


@dataclass
class DataConfig:
    name: str = "synthetic"
    root: Optional[str] = None
    train_split: str = "train"
    val_split: Optional[str] = "val"  # null: no validation (no early stopping)
    fold: Optional[int] = None
    folds: int = 5
    # with fold, on a dataset without an official test split: the fold's part is the test split, the
    # next fold's part the validation split (early stopping), the others train (sibnet.data.registry)
    held_out_test: bool = False
    image_size: int = 128
    batch_size: int = 16
    num_workers: int = 0
    seed: Optional[int] = None  # dataset draws and splits; null: train.seed
    options: dict = field(default_factory=dict)


@dataclass
class UnlabeledConfig:
    enabled: bool = False
    name: Optional[str] = None  # null: the labeled dataset (``data.name`` and ``data.root``)
    root: Optional[str] = None
    split: str = "unlabeled"
    options: dict = field(default_factory=dict)
    batch_size: Optional[int] = None  # null: ``data.batch_size``
    every: int = 1  # add one unlabeled batch to every N-th optimizer step
    weight: float = 1.0


@dataclass
class OptimConfig:
    lr: float = 1e-3
    betas: tuple[float, float] = (0.93, 0.999)
    weight_decay: float = 0.0
    scheduler: Literal["none", "cosine", "step"] = "none"
    step_size: int = 10  # epochs between decays (step)
    gamma: float = 0.1
    grad_clip: Optional[float] = None


@dataclass
class TrainConfig:
    epochs: int = 50
    max_steps: Optional[int] = None  # stop after this many optimizer steps (paper: 1e5)
    patience: Optional[int] = 10  # epochs without a better validation AUROC; null disables
    min_delta: float = 0.0
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    deterministic: bool = False
    checkpoint_every: int = 0  # optimizer steps between mid-epoch checkpoints; 0: epoch ends only
    log_every: int = 10
    progress: bool = True
    recipe: Optional[Literal["pham"]] = None  # null: plain training; see sibnet.training.recipes
    recipe_options: dict = field(default_factory=dict)  # pham: stage1, lsr_range, hierarchy, ...
    bn_stats: BnStats = "stored"  # train: re-estimate BatchNorm statistics at epoch ends
    watch_maps: bool = True  # epoch ends: how alike / flat the class maps are (sibnet.training.collapse)
    nonfinite: Literal["stop", "skip"] = "stop"  # a NaN/inf loss: stop the run, or skip that step


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossOptions = field(default_factory=LossOptions)
    data: DataConfig = field(default_factory=DataConfig)
    unlabeled: UnlabeledConfig = field(default_factory=UnlabeledConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    out: str = "runs/sibnet"

    def to_dict(self) -> dict:
        """Plain nested dict (lists instead of tuples), as written to ``config.yaml`` and checkpoints."""
        return _plain(asdict(self))


# keys that may change when a run is resumed (everything else must match the checkpoint)
RESUMABLE_CHANGES = ("out", "train.epochs", "train.max_steps", "train.patience", "train.progress",
                     "train.log_every", "train.device", "train.checkpoint_every", "data.num_workers",
                     "train.watch_maps")

# dataset options that the loaders get from other keys (``data.options`` may not hold them)
RESERVED_DATA_OPTIONS = {"root": "root", "split": "train_split/val_split", "fold": "fold", "folds": "folds",
                         "held_out_test": "held_out_test",
                         "image_size": "image_size", "size": "image_size", "seed": "seed"}


def data_seed(cfg: "Config | dict") -> int:
    """The seed of the dataset draws and splits: ``data.seed``, or ``train.seed`` when it is null. ``cfg``: a
    Config or its plain form as a checkpoint stores it (a missing train.seed there reads as 0)."""
    if isinstance(cfg, dict):
        seed = (cfg.get("data") or {}).get("seed")
        return int((cfg.get("train") or {}).get("seed", 0) if seed is None else seed)
    return cfg.data.seed if cfg.data.seed is not None else cfg.train.seed


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


# ---------------------------------------------------------------- type checking

def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    if origin is tuple:
        return f"a list of {len(typing.get_args(tp))} numbers"
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string",
            dict: "a mapping"}.get(tp, getattr(tp, "__name__", str(tp)))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Return ``value`` as type ``tp`` or raise ConfigError naming ``key``."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value in choices and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: {value!r} is not {_type_name(tp)}")
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")
                             and type(None) in args and str not in args):
            if type(None) in args:
                return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                pass
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
        return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
    elif tp is dict:
        if isinstance(value, dict):
            return dict(value)
    elif tp is type(None):
        if value is None:
            return None
    raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")


def _build(cls: type, data: dict, prefix: str, source: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in data if k not in names]
    if unknown:
        where = f" in {source}" if source else ""
        key = f"{prefix}{unknown[0]}"
        scope = f"keys of {prefix[:-1]!r}" if prefix else "top-level keys"
        raise ConfigError(f"unknown key {key!r}{where}; {scope} are: {', '.join(names)}")
    kwargs = {}
    for name in names:
        if name not in data:
            continue
        tp, value, key = hints[name], data[name], f"{prefix}{name}"
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                raise ConfigError(f"{key}: expected a mapping of keys, got {value!r}")
            kwargs[name] = _build(tp, value, f"{key}.", source)
        else:
            kwargs[name] = _coerce(value, tp, key)
    return cls(**kwargs)


def _merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.epochs=3"`` -> (["train", "epochs"], 3); the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected KEY=VALUE, e.g. train.epochs=3")
    key, raw = text.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"override {text!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({str(exc).splitlines()[0]})") from None
    return parts, value


def _nest(parts: list[str], value: Any) -> dict:
    out: Any = value
    for p in reversed(parts):
        out = {p: out}
    return out


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {_shown(str(path))}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({' '.join(str(exc).split())})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    return data


def config_from_dict(data: dict, source: str = "") -> Config:
    """Build and validate a :class:`Config` from a nested dict (missing keys take defaults)."""
    cfg = _build(Config, data, "", source)
    validate(cfg)
    return cfg


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (),
                settings: dict[str, Any] | None = None, base: dict | None = None) -> Config:
    """Defaults (or ``base``, a plain config dict such as a checkpoint's), then the YAML file at
    ``path``, then ``settings`` (dotted key -> value, e.g. from command-line flags), then
    ``key.sub=value`` overrides (values parsed as YAML); validated."""
    data: dict = {}
    if base is not None:
        _build(Config, base, "", "the checkpoint's configuration")
        data = _merge(data, base)
    if path is not None:
        file_data = read_yaml(path)
        _build(Config, file_data, "", str(path))  # unknown keys / types reported with the file name
        data = _merge(data, file_data)
    for key, value in (settings or {}).items():
        data = _merge(data, _nest(key.split("."), value))
    for text in overrides:
        parts, value = parse_override(text)
        _build(Config, _nest(parts, value), "", f"override {text!r}")
        data = _merge(data, _nest(parts, value))
    return config_from_dict(data)


def validate(cfg: Config) -> None:
    """Value checks beyond types (ranges, the loss options' checks, paths that must exist); spells a
    null ``loss.saliency`` as None and completes ``train.recipe_options`` in place."""
    positive = {"data.image_size": cfg.data.image_size, "data.batch_size": cfg.data.batch_size,
                "data.folds": cfg.data.folds, "train.epochs": cfg.train.epochs,
                "train.log_every": cfg.train.log_every, "unlabeled.every": cfg.unlabeled.every,
                "optim.step_size": cfg.optim.step_size}
    for key, value in positive.items():
        if value < 1:
            raise ConfigError(f"{key}: must be >= 1, got {value}")
    for key, value in {"data.num_workers": cfg.data.num_workers, "train.seed": cfg.train.seed,
                       "data.seed": cfg.data.seed or 0,
                       "train.checkpoint_every": cfg.train.checkpoint_every,
                       "model.dropout": cfg.model.dropout, "optim.weight_decay": cfg.optim.weight_decay,
                       "train.min_delta": cfg.train.min_delta}.items():
        if value < 0:
            raise ConfigError(f"{key}: must be >= 0, got {value}")
    if not cfg.optim.lr > 0:
        raise ConfigError(f"optim.lr: must be > 0, got {cfg.optim.lr}")
    if not all(0 <= b < 1 for b in cfg.optim.betas):
        raise ConfigError(f"optim.betas: each must be in [0, 1), got {list(cfg.optim.betas)}")
    for key, value in {"train.max_steps": cfg.train.max_steps, "train.patience": cfg.train.patience,
                       "unlabeled.batch_size": cfg.unlabeled.batch_size}.items():
        if value is not None and value < 1:
            raise ConfigError(f"{key}: must be >= 1 or null, got {value}")
    if cfg.optim.grad_clip is not None and cfg.optim.grad_clip < 0:
        raise ConfigError(f"optim.grad_clip: must be >= 0 or null, got {cfg.optim.grad_clip}")
    if isinstance(cfg.loss.saliency, str) and cfg.loss.saliency.lower() in ("none", "null", ""):
        cfg.loss.saliency = None
    check_loss_options(cfg.loss, "loss.")
    if cfg.data.held_out_test and (cfg.data.fold is None or cfg.data.folds < 3):
        raise ConfigError("data.held_out_test: needs data.fold and data.folds >= 3 (each fold's part is the test "
                          f"split, the next fold's the validation split), got fold {cfg.data.fold}, "
                          f"folds {cfg.data.folds}")
    if cfg.data.fold is not None and not 0 <= cfg.data.fold < cfg.data.folds:
        raise ConfigError(f"data.fold: must be in 0..{cfg.data.folds - 1} (data.folds={cfg.data.folds}), "
                          f"got {cfg.data.fold}")
    dev = cfg.train.device
    if not (dev in ("auto", "cpu", "cuda") or (dev.startswith("cuda:") and dev[5:].isdigit())):
        raise ConfigError(f"train.device: expected auto, cpu, cuda or cuda:N, got {dev!r}")
    for section, options in (("data", cfg.data.options), ("unlabeled", cfg.unlabeled.options)):
        for key in options:
            if key in RESERVED_DATA_OPTIONS:
                where = f"unlabeled.{key}" if section == "unlabeled" and key in ("root", "split") \
                    else "data." + RESERVED_DATA_OPTIONS[key]
                raise ConfigError(f"{section}.options.{key}: the loader gets {key!r} from {where}; set it there")
    _check_root("data", cfg.data.name, cfg.data.root)
    if cfg.unlabeled.enabled and cfg.unlabeled.name is not None:
        _check_root("unlabeled", cfg.unlabeled.name, cfg.unlabeled.root)
    if cfg.model.pretrained is not None and not _path_exists(cfg.model.pretrained, "model.pretrained", file=True):
        raise ConfigError(f"model.pretrained: file not found: {_shown(cfg.model.pretrained)}")
    check_recipe_options(cfg.train)  # checked and completed (the stage split of pham is fixed here)


def _path_exists(path: str, key: str, file: bool = False) -> bool:
    """Whether ``path`` exists (is a file); a path the system cannot even look up is a ConfigError."""
    try:
        return Path(path).is_file() if file else Path(path).exists()
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(f"{key}: unusable path {_shown(path)} ({reason})") from None


def _shown(path: str) -> str:
    """A path for a one-line message: as it is, or quoted when it holds odd characters; long ones cut."""
    text = path if path.isprintable() else repr(path)
    return text if len(text) <= 200 else text[:197] + "..."


def _check_root(section: str, name: str, root: str | None) -> None:
    if root is not None and not _path_exists(root, f"{section}.root"):
        raise ConfigError(f"{section}.root: dataset path not found: {_shown(root)}")
    if root is None and name.lower() in DATASETS_NEEDING_ROOT:
        raise ConfigError(f"{section}.root: dataset {name!r} needs a path to its files (--root DIR or "
                          f"{section}.root=DIR)")


def diff_configs(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two plain config dicts."""
    keys = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            keys += diff_configs(a, b, f"{prefix}{k}.")
        elif a != b:
            keys.append(f"{prefix}{k}")
    return keys


def dump_config(cfg: Config, path: str | Path) -> None:
    try:
        Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    except OSError as exc:
        raise SibnetError(f"{path}: cannot write the configuration: {exc.strerror or exc}") from None
