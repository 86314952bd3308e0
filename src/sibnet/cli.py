"""The ``sibnet`` command line.

Each subcommand lives in its own module and registers itself through a function
``register(subparsers)`` that adds its parser and sets ``func`` on it. A
:class:`~sibnet.errors.SibnetError` raised by a command is printed as one line
and the process exits with code 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from . import __version__
from .errors import SibnetError

# module paths that provide ``register(subparsers)``; missing ones are skipped
COMMAND_MODULES = [
    "sibnet.commands.demo",
    "sibnet.commands.explain",
    "sibnet.commands.train",
    "sibnet.commands.evaluate",
    "sibnet.commands.data",
    "sibnet.commands.segment",
    "sibnet.commands.experiment",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sibnet",
        description="Interpretability-guided inductive bias (SIBNet) for medical image classifiers: "
        "train, evaluate and explain models whose saliency maps are class-distinctive and spatially coherent.",
    )
    parser.add_argument("--version", action="version", version=f"sibnet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except SibnetError as exc:
        print(f"sibnet {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
