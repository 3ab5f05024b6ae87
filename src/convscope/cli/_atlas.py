"""`convscope atlas build | check | export` and `convscope serve`: the atlas of a model and its viewer."""

from __future__ import annotations

import argparse
import sys

from ._common import add_common_options, add_model_args, device, print_json, progress


def _layers(text: str) -> list[str]:
    return [name for name in text.split(",") if name]


def register(sub: argparse._SubParsersAction) -> None:
    atlas = sub.add_parser("atlas", help="build, check or export an atlas: every unit's pictures, stored in a folder")
    verbs = atlas.add_subparsers(dest="atlas_command", metavar="VERB", required=True)
    atlas.set_defaults(handler=lambda _args: atlas.print_help() or 2)  # each verb sets its own

    build = verbs.add_parser("build", help="build an atlas, or finish an interrupted one (same options)")
    add_model_args(build)
    build.add_argument("--data", default=None, help="dataset (name, folder, .npz, IDX file) for the dataset sample "
                                                    "and the analysis stages")
    build.add_argument("-o", "--output", required=True, help="atlas folder (made if missing; resumed if it exists)")
    build.add_argument("--layers", type=_layers, action="extend", default=None,
                       help="layers whose units to cover, comma-separated (default: every Conv2d)")
    units = build.add_mutually_exclusive_group()
    units.add_argument("--units-per-layer", type=int, default=None, metavar="N",
                       help="the first N units of each layer (default 16)")
    units.add_argument("--units", choices=["all"], default=None, help="every unit of each layer")
    build.add_argument("--checkpoints", nargs="+", default=(), metavar="CKPT",
                       help="model strings or files of the same architecture, in training order: evolution strips")
    build.add_argument("--classes", type=_layers, default=None,
                       help="class names or indices for class models, comma-separated (default: all classes of a "
                            "model with at most 10, else none)")
    build.add_argument("--steps", type=int, default=256, help="render steps per picture (default 256)")
    build.add_argument("--chunk", type=int, default=32, help="units per batched render (default 32; fixed per atlas)")
    build.add_argument("--samples", type=int, default=64, help="dataset images stored for the viewer (default 64)")
    build.add_argument("--k", type=int, default=9, help="top dataset images per unit (default 9)")
    build.add_argument("--scan-limit", type=int, default=None, metavar="N",
                       help="scan only the first N dataset items (default: all)")
    build.add_argument("--probe-limit", type=int, default=2000, metavar="N",
                       help="dataset items the linear probes read, a seeded sample (default 2000)")
    build.add_argument("--precision", choices=["auto", "float32", "bf16"], default="auto",
                       help="what the renders run in (default auto: measured once per layer, then pinned in the atlas)")
    build.add_argument("--engine", choices=["local", "ray"], default="local",
                       help="where the scan and the render chunks run (ray: Ray tasks; default local)")
    build.add_argument("--address", default=None,
                       help="with --engine ray: the cluster to join (HOST:6379, ray://HOST:10001, auto); default a "
                            "local Ray started for the build")
    build.add_argument("--stages", type=_layers, default=None, help="only these stages, comma-separated")
    build.set_defaults(handler=run_build)

    check = verbs.add_parser("check", help="verify an atlas: database integrity, every file present and unchanged")
    check.add_argument("atlas", help="atlas folder")
    check.add_argument("--json", action="store_true", help="print the findings as JSON")
    check.set_defaults(handler=run_check)

    export = verbs.add_parser("export", help="write the atlas's pages as a static HTML site (no server needed)")
    export.add_argument("atlas", help="atlas folder")
    export.add_argument("-o", "--output", required=True, help="site folder to write")
    export.set_defaults(handler=run_export)

    for verb in (build, check, export):
        add_common_options(verb)  # `--device` and `--debug` after the verb too

    serve = sub.add_parser("serve", help="browse atlases in a local web viewer, with a live page for your images")
    serve.add_argument("atlases", nargs="+", metavar="ATLAS",
                       help="atlas folders (or a folder of atlases); several are served side by side")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    serve.set_defaults(handler=run_serve)


def run_build(args: argparse.Namespace) -> int:
    from ..atlas import BuildConfig, build

    units = "all" if args.units == "all" else (args.units_per_layer or 16)
    config = BuildConfig(
        model=args.model, data=args.data, arch=args.arch, layers=tuple(args.layers) if args.layers else None,
        units=units, checkpoints=tuple(args.checkpoints), classes=tuple(args.classes) if args.classes else None,
        steps=args.steps, seed=args.seed, chunk=args.chunk, samples=args.samples, k=args.k,
        scan_limit=args.scan_limit, probe_limit=args.probe_limit, precision=args.precision, engine=args.engine,
        address=args.address, stages=tuple(args.stages) if args.stages else None)
    with progress("atlas") as bar:
        task = bar.add_task("planning", total=None)

        def report(done: float, total: int, what: str) -> None:
            bar.update(task, completed=done, total=total, description=what)

        try:
            result = build(config, args.output, device=device(args), progress=report, argv=sys.argv)
        except KeyboardInterrupt:
            print(f"convscope: stopped; every stored result is kept: run the same command again to resume "
                  f"{args.output}", file=sys.stderr)
            raise
    for path in result.cleaned:
        print(f"removed {path}, left by an interrupted build", file=sys.stderr)
    for stage, reason in result.skipped.items():
        print(f"stage {stage} skipped: {reason}", file=sys.stderr)
    print(result.summary())
    return 0


def run_check(args: argparse.Namespace) -> int:
    from ..atlas import check

    report = check(args.atlas)
    if args.json:
        print_json({"folder": str(report.folder), "ok": report.ok, "errors": list(report.errors),
                    "warnings": list(report.warnings), "counts": report.counts})
    else:
        print("\n".join(report.lines()))
    return 0 if report.ok else 1


def run_export(args: argparse.Namespace) -> int:
    from ..web.export import export

    site = export(args.atlas, args.output)
    print(f"wrote {site}/index.html (open it in a browser; no server needed)")
    return 0


def run_serve(args: argparse.Namespace) -> int:
    from ..web.app import serve

    serve(args.atlases, host=args.host, port=args.port, device=device(args))
    return 0
