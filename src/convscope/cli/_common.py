"""Helpers shared by the CLI commands: loading a model from its string, devices, output paths, JSON output,
per-file batches, progress."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch

from ..errors import ConvscopeError

T = TypeVar("T")

_DEVICE_TYPES = ("cpu", "cuda", "mps", "xpu")


def device_option(text: str) -> str:
    """argparse type of `--device`: a device torch knows and this machine has (checked before any work starts)."""
    try:
        dev = torch.device(text.strip())
    except (RuntimeError, ValueError):
        dev = None
    if dev is None or dev.type not in _DEVICE_TYPES:
        raise argparse.ArgumentTypeError(f"{text!r} is not a device convscope runs on; use cpu, cuda, cuda:1, mps "
                                         "or xpu")
    if dev.type == "cpu":
        return text.strip()
    backend = getattr(torch, dev.type, None) if dev.type != "mps" else getattr(torch.backends, "mps", None)
    if backend is None or not backend.is_available():
        build = " (this torch was built without CUDA)" if dev.type == "cuda" and not torch.version.cuda else ""
        raise argparse.ArgumentTypeError(f"{text!r}: no {dev.type.upper()} device is available on this machine{build}; "
                                         "use --device cpu")
    count = backend.device_count() if hasattr(backend, "device_count") else 1
    if dev.index is not None and dev.index >= count:
        raise argparse.ArgumentTypeError(f"{text!r}: this machine has {count} {dev.type} device(s), "
                                         f"{dev.type}:0..{dev.type}:{count - 1}")
    return text.strip()


def device(args: argparse.Namespace) -> torch.device:
    if getattr(args, "device", None):
        return torch.device(args.device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def add_common_options(parser: argparse.ArgumentParser, *, top_level: bool = False) -> None:
    """`--device` and `--debug`. On a subcommand they default to `argparse.SUPPRESS`, so a value given before the
    subcommand (`convscope --device cpu predict ...`) is not overwritten by the subcommand's default."""
    group = parser.add_argument_group("common options")
    group.add_argument("--device", type=device_option, default=None if top_level else argparse.SUPPRESS,
                       help="torch device: cpu, cuda, cuda:1, mps (default: cuda if available, else cpu)")
    group.add_argument("--debug", action="store_true", default=False if top_level else argparse.SUPPRESS,
                       help="show full tracebacks for errors")


def add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="model string: torchvision:NAME[@WEIGHTS], timm:NAME, convscope:NAME, "
                                      "FILE.pt (TorchScript), FILE.safetensors|.pth with --arch, path/file.py:fn")
    parser.add_argument("--arch", default=None, help="architecture model string for a bare weight file")
    parser.add_argument("--seed", type=int, default=0, help="seed (random init, noise, ...); default 0")


def positive_int(text: str) -> int:
    """argparse type of counts that must be at least 1 (`--top`, `--epochs`, ...)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number; give 1 or more") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is too small; give 1 or more")
    return value


def output_file(text: str, suffixes: Sequence[str] = (), example: str = "out.png") -> str:
    """Check that `text` names a file we can create or overwrite (not a folder, in a folder we can write to, with one
    of `suffixes` when given) and return it. Raises `argparse.ArgumentTypeError` naming what would work."""
    path = Path(text).expanduser()
    if not text.strip():
        raise argparse.ArgumentTypeError(f"empty file name; give one such as {example}")
    if text.endswith(("/", os.sep)) or path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a folder; give a file name such as {path / example}")
    if suffixes and path.suffix.lower() not in suffixes:
        raise argparse.ArgumentTypeError(f"{text!r}: give a {suffixes[0]} file name, e.g. "
                                         f"{path.with_suffix(suffixes[0]) if path.suffix else str(path) + suffixes[0]}")
    _check_writable(path, text)
    return text


def _check_writable(path: Path, text: str, *, folder: bool = False) -> None:
    """`path` (a file, or a folder when `folder`) can be created or written: its nearest existing ancestor is a
    folder we can create files in (probed with a temporary file, which is what `/proc` or a read-only disk fail)."""
    existing = path.absolute() if folder else path.absolute().parent
    while not existing.exists():  # folders that do not exist yet are created when the output is written
        existing = existing.parent
    if not existing.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r}: {str(existing)!r} is a file, not a folder")
    try:
        if path.exists() and not folder:
            with open(path, "ab"):  # writable, without changing it
                pass
        else:
            with tempfile.TemporaryFile(dir=existing):
                pass
    except OSError as error:
        where = path if path.exists() and not folder else existing
        raise argparse.ArgumentTypeError(f"{text!r}: cannot write to {str(where)!r} ({error.strerror or error}); "
                                         "choose another place") from None


def _picture_suffixes() -> tuple[str, ...]:
    from PIL import Image

    Image.init()
    writable = [ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.SAVE]
    return (".png", *sorted(e for e in writable if e != ".png"))


def picture_output(text: str) -> str:
    """argparse type of `-o/--output` for pictures: a writable file with an image extension (PNG by default)."""
    return output_file(text, _picture_suffixes(), "picture.png")


def npz_output(text: str) -> str:
    """argparse type of `--save MAPS.npz`."""
    return output_file(text, (".npz",), "maps.npz")


def model_output(text: str) -> str:
    """argparse type of `train -o`: the `.safetensors` file a trained model is written to."""
    return output_file(text, (".safetensors",), "model.safetensors")


def output_folder(text: str) -> str:
    """argparse type of an output folder (`demo -o`): an existing folder we can write to, or one we can create."""
    path = Path(text).expanduser()
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a file; give a folder")
    _check_writable(path, text, folder=True)
    return text


def add_output(parser: argparse.ArgumentParser, default: str,
               json_help: str = "print the numbers and recipe as JSON") -> None:
    """`-o/--output` (a PNG, the recipe written beside it as .json) and `--json`, as every picture command has them."""
    parser.add_argument("-o", "--output", default=default, type=picture_output,
                        help=f"picture to write (PNG; default {default}); the recipe goes beside it as .json")
    parser.add_argument("--json", action="store_true", help=json_help)


def load_spec(args: argparse.Namespace):
    from ..models import load

    spec = load(args.model, arch=getattr(args, "arch", None), seed=getattr(args, "seed", 0), device=device(args))
    if spec.source.get("assumed"):  # preprocessing or input size not read from metadata: say what was taken
        print(f"note: {spec.source['assumed']}", file=sys.stderr)
    return spec


def print_json(payload: Any) -> None:
    json.dump(payload, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


def report_error(error: BaseException, name: str | None = None) -> None:
    """One line on stderr, as `main` prints a `ConvscopeError`; `name` is prefixed unless the message holds it."""
    text = str(error)
    if name is not None and name not in text:
        text = f"{name}: {text}"
    print(f"convscope: error: {text}", file=sys.stderr)


def for_each_file(paths: Sequence[str], work: Callable[[str], T]
                  ) -> tuple[list[tuple[str, T]], list[tuple[str, ConvscopeError]]]:
    """Run `work(path)` for every path; a `ConvscopeError` for one file is reported on stderr at once (one line naming
    the file) and the other files still run. Returns ([(path, result)] of the good files, [(path, error)] of the bad
    ones); a command that gets bad files back should exit 2 (`main` maps a handler's return value to the exit code).

    With a single path the error is raised as usual, so one bad file is one error line, as for any command."""
    if len(paths) == 1:
        return [(paths[0], work(paths[0]))], []
    done: list[tuple[str, T]] = []
    failed: list[tuple[str, ConvscopeError]] = []
    for path in paths:
        try:
            done.append((path, work(path)))
        except ConvscopeError as error:
            report_error(error, path)
            failed.append((path, error))
    return done, failed


def _console():
    from rich.console import Console

    return Console(stderr=True)


def progress(description: str, total: int | None = None):
    """A rich progress bar on stderr (quiet when stderr is not a terminal); use as a context manager. A task's
    `status` field (`bar.update(task, status="loss 0.31")`) is shown after the time."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeRemainingColumn
    from rich.text import Text

    class Status(ProgressColumn):
        def render(self, task) -> Text:
            return Text(str(task.fields.get("status", "")))

    console = _console()
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    Status(), console=console, transient=False, disable=not console.is_terminal)


def step_progress(bar, description: str) -> Callable[[int, int], None]:
    """A task on `bar` and the `progress(done, total)` callback the library's long calls take to move it."""
    task = bar.add_task(description, total=None)

    def update(done: int, total: int) -> None:
        bar.update(task, completed=done, total=total)

    return update
