"""The ``taskbuffer`` command line: one subcommand per module of this package.

Each subcommand module has ``register(subparsers)``, which adds its parser and sets its
``run`` default: a function of the parsed arguments returning the exit code. Adding a
subcommand is adding a module and its name to :data:`SUBCOMMANDS`.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from importlib import import_module

__all__ = ("SUBCOMMANDS", "build_parser", "main")

SUBCOMMANDS: tuple[str, ...] = ("dashboard", "jobs", "worker")


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``taskbuffer`` with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="taskbuffer", description="taskbuffer's command line tools."
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in SUBCOMMANDS:
        import_module(f"{__name__}.{name}").register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``taskbuffer`` with ``argv`` (default: the process's arguments)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    code: int = args.run(args)
    return code
