"""`convscope demo`: build the demo atlases, run the demo that makes the README's gallery, then open the viewer."""

from __future__ import annotations

import argparse

from ._common import output_folder


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("demo", help="run the demo: pictures of every capability into one folder")
    parser.add_argument("-o", "--out", default="docs/gallery", type=output_folder,
                        help="output folder (default docs/gallery)")
    parser.add_argument("--quick", action="store_true", help="fewer optimization steps (a smoke test)")
    parser.add_argument("--only", nargs="*", default=None,
                        help="run only the gallery steps whose title contains these words (with --no-serve, the "
                             "atlases are not built either)")
    parser.add_argument("--atlas", default="atlas", help="folder of the demo atlases (default atlas/; resumed)")
    parser.add_argument("--no-serve", action="store_true", help="only build: do not start the viewer afterwards")
    parser.add_argument("--port", type=int, default=8000, help="viewer port on 127.0.0.1 (default 8000)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..atlas.demo import build_demo
    from ..demo import run_demo

    refresh = args.only is not None and args.no_serve  # a gallery refresh: the atlases are not needed
    atlases = [] if refresh else build_demo(args.atlas, device=args.device, quick=args.quick)
    code = run_demo(args.out, device=args.device, quick=args.quick, only=args.only)
    if args.no_serve or not atlases:
        return code
    from ..web.app import serve

    serve(atlases, host="127.0.0.1", port=args.port, device=args.device)
    return code
