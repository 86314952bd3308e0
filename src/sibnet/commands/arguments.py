"""Arguments that several subcommands share, defined once: a trained checkpoint and the data it is applied to."""

from __future__ import annotations

import argparse


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
