"""The ``diskplane`` command line: one parser, subcommands contributed by each package.

Every package that has commands exposes ``register(subparsers)`` in its own
``cli`` module; handlers take the parsed namespace (with ``data_dir`` already
resolved to a :class:`~pathlib.Path`) and return the process exit code.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

from controllers.settings import resolve_data_dir

Handler = Callable[[argparse.Namespace], int]

# Packages whose ``cli`` module contributes subcommands, in help order.
COMMAND_MODULES = (
    "controllers.doctor",
    "cdi.cli",
    "cdi.service.cli",
    "containerdisk.cli",
    "virtnode.cli",
    "controllers.commands",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="diskplane",
        description="VM disks into volumes, volumes to registries, guests on volumes.",
    )
    parser.add_argument(
        "--data-dir",
        help="state directory (default: $DISKPLANE_DATA_DIR or ~/.local/share/diskplane)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue  # that package has no commands yet
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    args.data_dir = resolve_data_dir(args.data_dir)
    try:
        return handler(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
