"""`convscope demo`: run the demo that makes the README's gallery."""

from __future__ import annotations

import argparse

from ._common import output_folder


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("demo", help="run the demo: pictures of every capability into one folder")
    parser.add_argument("-o", "--out", default="docs/gallery", type=output_folder,
                        help="output folder (default docs/gallery)")
    parser.add_argument("--quick", action="store_true", help="fewer optimization steps (a smoke test)")
    parser.add_argument("--only", nargs="*", default=None, help="run only steps whose title contains these words")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..demo import run_demo

    return run_demo(args.out, device=args.device, quick=args.quick, only=args.only)
