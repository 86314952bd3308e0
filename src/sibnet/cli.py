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
    "sibnet.commands.monitor",
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


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> argparse.Namespace:
    """``parser.parse_args``, except that ``KEY=VALUE`` overrides may stand anywhere on the line.

    argparse fills a trailing ``nargs="*"`` positional at its first chance, so overrides written
    after an option (``sibnet experiment table1 --dataset nih loss.embed_grad=maps``) would be
    refused as unrecognized; for a command that takes overrides they are appended in order.
    Anything else unrecognized is still an error naming it.
    """
    args, extra = parser.parse_known_args(argv)
    if extra:
        stray = [e for e in extra if e.startswith("-") or "=" not in e]
        if stray or not hasattr(args, "overrides"):
            parser.error(f"unrecognized arguments: {' '.join(stray or extra)}")
        args.overrides = list(args.overrides or []) + extra
    return args


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parse_args(parser, argv)
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
