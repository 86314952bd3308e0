"""The options of the training recipes (``train.recipe_options``), checked and completed when the
configuration is read.

The recipes themselves (what they do to the data and the steps) are :mod:`sibnet.training.recipes`;
this module holds what the configuration must know of them, so that the config layer checks them
without importing the training layer. It is part of layer 0 (docs/architecture.md): it imports
nothing of the package but the errors.

``pham`` (Pham et al. 2020): ``stage1`` (share of the budget in stage 1, default 0.5),
``stage1_epochs`` / ``stage1_steps`` (the split itself; both unset: ``stage1`` times ``train.epochs``
/ ``train.max_steps``, fixed here so that ``config.yaml`` records the split used), ``lsr_range``
(U-LSR's soft targets, default [0.55, 0.85]) and ``hierarchy`` (``"chexpert"`` or a mapping
parent -> list of children).
"""

from __future__ import annotations

from .errors import ConfigError

PHAM_DEFAULTS = {"stage1": 0.5, "stage1_epochs": None, "stage1_steps": None, "lsr_range": [0.55, 0.85],
                 "hierarchy": "chexpert"}
KEY = "train.recipe_options"


def check_acyclic(parents: dict[str, list[str]]) -> None:
    """Raise a ConfigError naming the cycle when the child -> parents relation ``parents`` has one."""
    done: set[str] = set()

    def visit(node: str, path: tuple[str, ...]) -> None:
        if node in path:
            raise ConfigError(f"{KEY}.hierarchy: a cycle {' -> '.join((*path[path.index(node):], node))}")
        if node in done:
            return
        for p in parents.get(node, ()):
            visit(p, (*path, node))
        done.add(node)

    for node in list(parents):
        visit(node, ())


def _number(options: dict, key: str, lo: float, hi: float | None = None):
    v = options[key]
    if v is None and key != "stage1":
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= lo or (hi is not None and v > hi):
        bound = f"in [{lo:g}, {hi:g}]" if hi is not None else f">= {lo:g}"
        raise ConfigError(f"{KEY}.{key}: expected a number {bound}, got {v!r}")
    return float(v)


def pham_options(options: dict, epochs: int, max_steps: int | None) -> dict:
    """Checked and completed options of ``pham`` (see the module doc); ``stage1_epochs`` and
    ``stage1_steps`` both unset: ``stage1`` times ``epochs`` / ``max_steps``."""
    unknown = sorted(set(options) - set(PHAM_DEFAULTS))
    if unknown:
        raise ConfigError(f"{KEY}: unknown key {unknown[0]!r} for recipe 'pham'; keys: {', '.join(PHAM_DEFAULTS)}")
    o = {**PHAM_DEFAULTS, **options}
    o["stage1"] = _number(o, "stage1", 0.0, 1.0)
    o["stage1_epochs"] = _number(o, "stage1_epochs", 0.0)
    o["stage1_steps"] = _number(o, "stage1_steps", 0.0)
    if o["stage1_epochs"] is None and o["stage1_steps"] is None:
        o["stage1_epochs"] = o["stage1"] * epochs
        o["stage1_steps"] = o["stage1"] * max_steps if max_steps is not None else None
    r = o["lsr_range"]
    if not (isinstance(r, (list, tuple)) and len(r) == 2 and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                               for v in r) and 0 <= r[0] <= r[1] <= 1):
        raise ConfigError(f"{KEY}.lsr_range: expected [low, high] with 0 <= low <= high <= 1, got {r!r}")
    o["lsr_range"] = [float(r[0]), float(r[1])]
    h = o["hierarchy"]
    if isinstance(h, str):
        if h != "chexpert":
            raise ConfigError(f"{KEY}.hierarchy: expected 'chexpert' or a mapping parent -> [children], got {h!r}")
    elif isinstance(h, dict) and all(isinstance(p, str) and isinstance(c, (list, tuple)) and
                                     all(isinstance(n, str) for n in c) for p, c in h.items()):
        o["hierarchy"] = {p: list(c) for p, c in h.items()}
        check_acyclic({c: [p for p in h if c in h[p]] for cs in h.values() for c in cs})
    else:
        raise ConfigError(f"{KEY}.hierarchy: expected 'chexpert' or a mapping parent -> [children], got {h!r}")
    return o


def check_recipe_options(train) -> None:
    """Check ``train.recipe_options`` against ``train.recipe`` (a :class:`sibnet.config.TrainConfig`)
    and complete them in place (the stage split of ``pham`` is fixed here)."""
    if train.recipe is None:
        if train.recipe_options:
            raise ConfigError(f"{KEY}: set, but train.recipe is null (choose a recipe, e.g. train.recipe=pham)")
        return
    train.recipe_options = pham_options(dict(train.recipe_options), train.epochs, train.max_steps)
