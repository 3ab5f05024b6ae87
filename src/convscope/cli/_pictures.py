"""`convscope activations` and `convscope filters`: the first pictures of what a layer does and what it holds."""

from __future__ import annotations

import argparse
from pathlib import Path

from ._common import add_model_args, load_spec, picture_output, print_json

_CMAPS = ["viridis", "inferno", "gray", "coolwarm", "jet"]


def register(sub: argparse._SubParsersAction) -> None:
    act = sub.add_parser(
        "activations", help="every channel's feature map for one image, as a labelled grid",
        description="Run one image through the model up to LAYER and draw every channel's feature map in a labelled "
                    "grid (a vector layer as a bar/strip picture). Reports channels that are all zero on this image.")
    add_model_args(act)
    act.add_argument("image", help="image file (resized, centre-cropped and normalized for the model)")
    act.add_argument("--layer", required=True, help="layer path (see `convscope layers MODEL`), e.g. features.3")
    act.add_argument("-o", "--output", default=None, type=picture_output,
                     help="PNG to write (a .json recipe is written beside it)")
    act.add_argument("--max-channels", type=int, default=64, help="draw the first N channels (0: all; default 64)")
    act.add_argument("--norm", choices=["channel", "shared"], default="channel",
                     help="channel: each map scaled to its own min..max (default); shared: one scale for all maps")
    act.add_argument("--cmap", choices=_CMAPS, default="viridis", help="colormap (default viridis)")
    act.add_argument("--columns", type=int, default=None, help="tiles per row (default about square)")
    act.add_argument("--json", action="store_true", help="print shape, dead channels and per-channel max/mean")
    act.set_defaults(handler=run_activations)

    filt = sub.add_parser(
        "filters", help="a convolution's filters as pictures, with a smoothness score per filter",
        description="Draw the filters of a Conv2d layer (default: the first). Filters that read the model's input "
                    "are drawn as one RGB (or grayscale) tile each; deeper filters as rows of per-input-channel "
                    "kernels. Smoothness: 1 smooth, about 0.55 white noise, 0 the most oscillating pattern (see "
                    "convscope.analysis.filters); noisy first-layer filters hint at under-training.")
    add_model_args(filt)
    filt.add_argument("--layer", default=None, help="Conv2d layer path (default: the first Conv2d)")
    filt.add_argument("-o", "--output", default=None, type=picture_output,
                      help="PNG to write (a .json recipe is written beside it)")
    filt.add_argument("--max-filters", type=int, default=64, help="draw the first N filters (0: all; default 64)")
    filt.add_argument("--max-inputs", type=int, default=16,
                      help="deeper layers: input channels (columns) per filter (default 16)")
    filt.add_argument("--norm", choices=["filter", "shared"], default="filter",
                      help="filter: each filter scaled by its own max|w| (default); shared: one scale for the layer")
    filt.add_argument("--json", action="store_true", help="print the smoothness table as JSON")
    filt.set_defaults(handler=run_filters)


def run_activations(args: argparse.Namespace) -> int:
    from ..analysis import activations

    spec = load_spec(args)
    grid = activations(spec, args.image, args.layer)
    if args.output:
        grid.save(args.output, max_channels=args.max_channels or None, norm=args.norm, cmap=args.cmap,
                  columns=args.columns)
    if args.json:
        summary = grid.summary()
        summary["output"] = str(Path(args.output)) if args.output else None
        print_json(summary)
        return 0
    shape = "x".join(map(str, grid.tensor.shape))
    print(f"{grid.layer}: output {shape}")
    if grid.dead:
        print(f"dead on this image (all zero): {len(grid.dead)} of {grid.tensor.shape[0]}: "
              + ", ".join(map(str, grid.dead)))
    else:
        print("dead on this image (all zero): none")
    if args.output:
        print(f"wrote {args.output}")
    return 0


def run_filters(args: argparse.Namespace) -> int:
    from ..analysis import filters

    spec = load_spec(args)
    grid = filters(spec, args.layer)
    if args.output:
        grid.save(args.output, max_filters=args.max_filters or None, max_inputs=args.max_inputs, norm=args.norm)
    if args.json:
        summary = grid.summary()
        summary["output"] = str(Path(args.output)) if args.output else None
        print_json(summary)
        return 0
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=f"{grid.layer}: {tuple(grid.weights.shape)} (out, in, kh, kw)", title_justify="left")
    for column in ("filter", "smoothness", "L2 norm"):
        table.add_column(column, justify="right")
    for row in grid.table():
        smooth = "-" if row["smoothness"] is None else f"{row['smoothness']:.3f}"
        table.add_row(str(row["filter"]), smooth, f"{row['norm']:.4g}")
    console.print(table)
    median = grid.smoothness.nanmedian()
    if not bool(median.isnan()):
        console.print(f"median smoothness {float(median):.3f} (1 smooth, ~0.55 white noise)", highlight=False)
    if args.output:
        console.print(f"wrote {args.output}", highlight=False)
    return 0
