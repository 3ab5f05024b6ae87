"""Helpers shared by the CLI commands: loading a model from its string, devices, JSON output, progress."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import torch


def device(args: argparse.Namespace) -> torch.device:
    if getattr(args, "device", None):
        return torch.device(args.device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="model string: torchvision:NAME[@WEIGHTS], timm:NAME, convscope:NAME, "
                                      "FILE.pt (TorchScript), FILE.safetensors|.pth with --arch, path/file.py:fn")
    parser.add_argument("--arch", default=None, help="architecture model string for a bare weight file")
    parser.add_argument("--seed", type=int, default=0, help="seed (random init, noise, ...); default 0")


def add_output(parser: argparse.ArgumentParser, default: str,
               json_help: str = "print the numbers and recipe as JSON") -> None:
    """`-o/--output` (a PNG, the recipe written beside it as .json) and `--json`, as every picture command has them."""
    parser.add_argument("-o", "--output", default=default, help=f"picture to write (PNG; default {default}); the "
                                                                 "recipe goes beside it as .json")
    parser.add_argument("--json", action="store_true", help=json_help)


def load_spec(args: argparse.Namespace):
    from ..models import load

    return load(args.model, arch=getattr(args, "arch", None), seed=getattr(args, "seed", 0), device=device(args))


def print_json(payload: Any) -> None:
    json.dump(payload, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


def progress(description: str, total: int | None = None):
    """A rich progress bar on stderr (quiet when stderr is not a terminal); use as a context manager."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    console = Console(stderr=True)
    bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                   console=console, transient=False, disable=not console.is_terminal)
    return bar
