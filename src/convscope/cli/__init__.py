"""The `convscope` command: thin subcommands over the library.

Each `cli/_<family>.py` module defines `register(subparsers)` adding its commands; each command's handler takes the
parsed `argparse.Namespace` and returns an exit code. A `ConvscopeError` prints as one line (no traceback unless
`--debug`) and exits 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from ..errors import ConvscopeError

# One module per family of commands; each adds its own subcommands. Order = order in `convscope --help`.
_FAMILIES = ("_models", "_layers", "_pictures", "_train", "_attribute", "_featvis", "_recipes", "_analysis",
             "_embedding", "_demo")


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="convscope",
        description="See what a convolutional network has learned and why it decides what it decides.",
    )
    parser.add_argument("--version", action="version", version=f"convscope {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks for errors")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for family in _FAMILIES:
        try:
            module = importlib.import_module(f".{family}", __name__)
        except ModuleNotFoundError as error:
            if error.name == f"{__name__}.{family}":
                continue  # that family is not built yet
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 0
    try:
        return int(args.handler(args) or 0)
    except ConvscopeError as error:
        if args.debug:
            raise
        print(f"convscope: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("convscope: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
