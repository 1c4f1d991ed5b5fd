"""The ``cardioclr`` console script: one subcommand per pipeline stage.

Each stage module exposes ``register(subparsers)``, which adds its parser(s) and sets
``func`` (called with the parsed namespace, returns an exit code).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from cardioclr import __version__
from cardioclr.errors import CardioclrError

# Stage modules, in pipeline order. Each defines register(subparsers).
COMMAND_MODULES = (
    "cardioclr.data.cli_synth",
    "cardioclr.data.cli_prepare",
    "cardioclr.dicomimport.cli",
    "cardioclr.data.cli_verify",
    "cardioclr.data.cli_pack",
    "cardioclr.segment.cli",
    "cardioclr.ssl.cli",
    "cardioclr.classify.cli",
    "cardioclr.evaluate.cli",
    "cardioclr.study.cli",
)


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every stage's subcommands."""
    parser = argparse.ArgumentParser(
        prog="cardioclr",
        description="Heart segmentation + SimCLR pretraining + dual-phase disease classification "
        "for cardiac MRI (Nakashima et al.).",
    )
    parser.add_argument("--version", action="version", version=f"cardioclr {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name == name:  # stage not installed in this build
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``cardioclr`` script; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except CardioclrError as err:
        print(f"cardioclr {args.command}: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"cardioclr {args.command}: interrupted; re-run the same command to resume",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
