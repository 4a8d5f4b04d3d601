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

# Which module contributes which subcommands, in help order. Only the module
# that owns the command being run is imported, so `diskplane import` does not
# pay for the node agent's or the controllers' imports; a test keeps this
# table equal to what each module registers.
COMMAND_MODULES: dict[str, tuple[str, ...]] = {
    "controllers.doctor": ("doctor",),
    "cdi.cli": ("import",),
    "cdi.service.cli": ("importer", "upload"),
    "containerdisk.cli": ("push", "pull", "inspect", "push-index", "build"),
    "virtnode.cli": ("node",),
    "controllers.demo": ("demo",),
    "controllers.commands": (
        "up",
        "controllers",
        "apply",
        "get",
        "describe",
        "delete",
        "start",
        "stop",
        "restart",
        "pause",
        "unpause",
        "console",
        "image-upload",
    ),
}

_GLOBAL_OPTIONS_WITH_VALUE = ("--data-dir",)


def modules_for(argv: Sequence[str]) -> list[str]:
    """The command modules needed to parse ``argv``: one when a known command is named."""
    skip_next = False
    for token in argv:
        if skip_next:
            skip_next = False
            continue
        if token in _GLOBAL_OPTIONS_WITH_VALUE:
            skip_next = True
            continue
        if token.startswith("-"):
            continue
        for module, commands in COMMAND_MODULES.items():
            if token in commands:
                return [module]
        break
    return list(COMMAND_MODULES)


def build_parser(modules: Sequence[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="diskplane",
        description="VM disks into volumes, volumes to registries, guests on volumes.",
    )
    parser.add_argument(
        "--data-dir",
        help="state directory (default: $DISKPLANE_DATA_DIR, else ~/.local/share/diskplane,"
        " or /var/lib/diskplane for root)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES if modules is None else modules:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(modules_for(argv))
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
