"""`convscope tsne` and `convscope probe`: how a layer arranges a dataset, and where classes become linearly
separable."""

from __future__ import annotations

import argparse
from pathlib import Path

from ._common import add_model_args, add_output, load_spec, picture_output, positive_int, print_json, progress

_DATA_HELP = ("fashion-mnist, mnist (test split), photos (built by scripts/build_photos.py), an image folder (one "
              "sub-folder per class), a .npz or an IDX file")


def _add_data_args(parser: argparse.ArgumentParser, limit: int | None) -> None:
    parser.add_argument("--data", required=True, help=_DATA_HELP)
    shown = "all" if limit is None else str(limit)
    parser.add_argument("--limit", type=int, default=limit,
                        help=f"a seeded random sample of N items (default {shown}; 0 = all)")
    parser.add_argument("--pool", choices=["mean", "max"], default="mean",
                        help="how a feature map becomes a code: its spatial mean (default) or max")
    parser.add_argument("--batch-size", type=int, default=64, help="default 64")


def register(sub: argparse._SubParsersAction) -> None:
    tsne = sub.add_parser(
        "tsne", help="t-SNE of a layer's codes over a dataset, as a grid or scatter of thumbnails",
        description="Embed a layer's spatially pooled codes (default: the input of the last linear layer) in 2-D "
                    "with openTSNE and draw the items: a full grid where each image is snapped to one cell by an "
                    "optimal assignment (default), or a scatter. Frames are coloured by class. The coordinates, grid "
                    "cells and thumbnails are saved beside the picture as .npz.")
    add_model_args(tsne)
    _add_data_args(tsne, 1000)
    tsne.add_argument("--layer", default=None, help="layer path (its output), PATH:input (its input), or input "
                                                    "(default: the input of the last linear layer)")
    layout = tsne.add_mutually_exclusive_group()
    layout.add_argument("--grid", dest="layout", action="store_const", const="grid", help="a full grid (default)")
    layout.add_argument("--scatter", dest="layout", action="store_const", const="scatter",
                        help="thumbnails at their t-SNE positions")
    tsne.set_defaults(layout="grid")
    tsne.add_argument("--perplexity", type=float, default=None, help="default min(30, (N - 1) / 3)")
    tsne.add_argument("--thumb", type=int, default=48, help="thumbnail side in pixels (default 48)")
    tsne.add_argument("--size", type=positive_int, default=1600,
                      help="picture width in pixels (default 1600; the grid's cells are size / columns, 16 to 64)")
    tsne.add_argument("--split", choices=["train", "test"], default="test", help="split of a named dataset")
    add_output(tsne, "tsne.png", "print every item's coordinates, grid cell and the recipe as JSON")
    tsne.set_defaults(handler=run_tsne)

    probe = sub.add_parser(
        "probe", help="linear probes: held-out accuracy of a linear classifier on each layer's codes",
        description="For each layer, a logistic regression on its spatially pooled codes, trained on a seeded "
                    "stratified 75%% of the items (or on --train-data) and scored on the rest: where do classes "
                    "become linearly separable? Prints a table; -o writes a bar chart (+ .npz of the numbers).")
    add_model_args(probe)
    _add_data_args(probe, None)
    probe.add_argument("--layers", default=None,
                       help="comma-separated layers (PATH, PATH:input, input) or 'all' (every conv/linear output); "
                            "default: input, six conv/linear outputs spread over the network, and the input of the "
                            "last linear layer")
    probe.add_argument("--train-data", default=None,
                       help="train on this dataset (train split of a named one) and hold out --data (its test split)")
    probe.add_argument("--test-size", type=float, default=0.25, help="held-out fraction of --data (default 0.25)")
    probe.add_argument("-o", "--output", default=None, type=picture_output,
                       help="bar chart PNG to write (recipe .json and numbers .npz beside it)")
    probe.add_argument("--json", action="store_true", help="print the table and recipe as JSON")
    probe.set_defaults(handler=run_probe)


def _limit(args: argparse.Namespace) -> int | None:
    return args.limit if args.limit else None


def _count(dataset, args: argparse.Namespace) -> int:
    return min(len(dataset), _limit(args) or len(dataset))


def run_tsne(args: argparse.Namespace) -> int:
    from ..analysis import tsne
    from ..data import resolve

    spec = load_spec(args)
    data = resolve(args.data, split=args.split, channels=spec.channels)
    total = _count(data, args)
    with progress("codes", total=total) as bar:
        task = bar.add_task("codes", total=total)
        result = tsne(spec, data, args.layer, limit=_limit(args), seed=args.seed, pool=args.pool,
                      perplexity=args.perplexity, thumb=args.thumb, split=args.split, batch_size=args.batch_size,
                      progress=lambda n: bar.advance(task, n))
    path = result.save(args.output, layout=args.layout, size=args.size)
    if args.json:
        payload = result.to_dict()
        payload["output"] = str(path)
        print_json(payload)
        return 0
    params = result.recipe.params
    print(f"t-SNE of {result.layer} ({params['dims']} dims) on {len(result)} items of {params['data']['name']}, "
          f"perplexity {params['perplexity']:.3g}, seed {args.seed}")
    print(f"wrote {path} ({args.layout}) and {Path(path).with_suffix('.npz')} (coordinates, grid cells, thumbnails)")
    return 0


def run_probe(args: argparse.Namespace) -> int:
    from ..analysis import probe
    from ..data import resolve

    spec = load_spec(args)
    data = resolve(args.data, split="test", channels=spec.channels)
    train = resolve(args.train_data, split="train", channels=spec.channels) if args.train_data else None
    total = _count(data, args) + (_count(train, args) if train is not None else 0)
    with progress("codes", total=total) as bar:
        task = bar.add_task("codes", total=total)
        result = probe(spec, data, args.layers, train_data=train, limit=_limit(args), seed=args.seed,
                       pool=args.pool, test_size=args.test_size, batch_size=args.batch_size,
                       progress=lambda n: bar.advance(task, n))
    if args.output:
        result.save(args.output)
    if args.json:
        payload = result.to_dict()
        payload["output"] = args.output
        print_json(payload)
        return 0
    print(result.table())
    if args.output:
        print(f"wrote {args.output}")
    return 0
