"""Arguments that several subcommands share, defined once: a trained checkpoint, the data it is applied to and
the options of a saliency method."""

from __future__ import annotations

import argparse

from ..errors import SibnetError
from ..saliency.contrast import CONTRASTS


def add_checkpoint(p: argparse.ArgumentParser) -> None:
    """``--checkpoint CKPT`` (required): a checkpoint written by ``sibnet train``."""
    p.add_argument("--checkpoint", required=True, metavar="CKPT", help="checkpoint written by sibnet train")


def add_checkpoint_data(p: argparse.ArgumentParser, split: str, split_help: str) -> None:
    """``--checkpoint`` and the data to apply it to: ``--dataset``, ``--root`` (both default to the
    checkpoint's) and ``--split`` (default ``split``)."""
    add_checkpoint(p)
    p.add_argument("--dataset", default=None, help="dataset name (default: the checkpoint's)")
    p.add_argument("--root", default=None, help="dataset folder (default: the checkpoint's)")
    p.add_argument("--split", default=split, help=f"{split_help} (default {split})")


def add_saliency_options(p: argparse.ArgumentParser) -> None:
    """``--contrast`` and ``--saliency-option KEY=VALUE`` (repeatable), read by :func:`saliency_options`."""
    p.add_argument("--contrast", choices=CONTRASTS, default="none",
                   help="class-contrastive maps for deep_taylor, lrp_epsilon, lrp_alpha_beta (default none)")
    p.add_argument("--saliency-option", action="append", default=[], metavar="KEY=VALUE",
                   help="another option of the saliency method (YAML value), e.g. start=relu_logit; repeatable")


def saliency_options(texts: list[str], contrast: str = "none") -> dict:
    """``--saliency-option KEY=VALUE`` (YAML values) and ``--contrast`` as the method's keyword options."""
    import yaml

    options = {}
    for text in texts:
        key, sep, raw = text.partition("=")
        if not sep or not key.strip():
            raise SibnetError(f"--saliency-option {text!r}: expected KEY=VALUE, e.g. start=relu_logit")
        try:
            options[key.strip()] = yaml.safe_load(raw)
        except yaml.YAMLError:
            raise SibnetError(f"--saliency-option {text!r}: the value is not valid YAML") from None
    if contrast != "none":
        if options.get("contrast", contrast) != contrast:
            raise SibnetError(f"--contrast {contrast} and --saliency-option contrast={options['contrast']} disagree")
        options["contrast"] = contrast
    return options
