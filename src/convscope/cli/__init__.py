"""The `convscope` command: thin subcommands over the library.

Each `cli/_<family>.py` module defines `register(subparsers)` adding its commands; each command's handler takes the
parsed `argparse.Namespace` and returns an exit code. A `ConvscopeError`, a bad option and running out of memory
print as one line (no traceback unless `--debug`) and exit 2; `--device` and `--debug` work before or after the
subcommand. Output cut short by a closed pipe (`convscope models --json | head`) ends quietly.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from ..errors import ConvscopeError

# One module per family of commands; each adds its own subcommands. Order = order in `convscope --help`.
_FAMILIES = ("_models", "_layers", "_pictures", "_train", "_attribute", "_featvis", "_recipes", "_analysis",
             "_embedding", "_atlas", "_demo")


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: `convscope predict: error: argument --top: ...` and where to look."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__
    from ._common import add_common_options

    parser = _Parser(
        prog="convscope",
        description="See what a convolutional network has learned and why it decides what it decides.",
    )
    parser.add_argument("--version", action="version", version=f"convscope {__version__}")
    add_common_options(parser, top_level=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for family in _FAMILIES:
        try:
            module = importlib.import_module(f".{family}", __name__)
        except ModuleNotFoundError as error:
            if error.name == f"{__name__}.{family}":
                continue  # that family is not built yet
            raise
        module.register(sub)
    seen: set[int] = set()
    for command in sub.choices.values():  # every subcommand takes --device/--debug too (aliases share a parser)
        if id(command) not in seen and "--device" not in command._option_string_actions:
            add_common_options(command)
        seen.add(id(command))
    return parser


def _out_of_memory(error: BaseException) -> bool:
    import torch

    kinds = tuple(k for k in (getattr(torch, "OutOfMemoryError", None), torch.cuda.OutOfMemoryError) if k)
    text = str(error)
    return isinstance(error, kinds) or (isinstance(error, RuntimeError) and (
        "can't allocate memory" in text or "not enough memory" in text))


def _quiet_stdout() -> None:
    """After a broken pipe: point stdout at /dev/null so the interpreter's final flush does not complain."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # not a real file (tests capture stdout)
        pass


def _run(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:  # --help, --version, or a bad option (already printed in one line)
        return stop.code if isinstance(stop.code, int) else 0 if stop.code is None else 2
    if not getattr(args, "handler", None):
        parser.print_help()
        return 0
    from ..accel.memory import keep_freed_memory

    keep_freed_memory()  # this process is ours: keep freed memory for the next batch (see `accel.memory`)
    try:
        return int(args.handler(args) or 0)
    except ConvscopeError as error:
        if args.debug:
            raise
        print(f"convscope: error: {error}", file=sys.stderr)
        return 2
    except (RuntimeError, MemoryError) as error:
        if args.debug or not (isinstance(error, MemoryError) or _out_of_memory(error)):
            raise
        first = (str(error).strip().splitlines() or ["out of memory"])[0]
        print(f"convscope: error: out of memory ({first}); try a smaller --size or --batch-size, or another "
              "--device", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("convscope: interrupted", file=sys.stderr)
        return 130


def main(argv: Sequence[str] | None = None) -> int:
    try:
        code = _run(argv)
        sys.stdout.flush()  # a closed pipe shows up here for output still in the buffer
        return code
    except BrokenPipeError:  # the reader went away (`| head`): stop quietly, as `cat` and `ls` do
        _quiet_stdout()
        return 141


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
