"""`convscope topk` and `convscope stats`: one streaming pass over a dataset, locally or on Ray, resumable."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Any

from ._common import add_model_args, load_spec, output_folder, print_json


def _scan_args(p: argparse.ArgumentParser, layers_default: str | None) -> None:
    add_model_args(p)
    p.add_argument("--data", required=True, help="dataset: fashion-mnist, mnist, an image folder (ROOT/CLASS/IMG), "
                                                 "a .npz (images, labels), an IDX file")
    p.add_argument("--split", choices=["train", "test"], default="test", help="split of a named dataset (test)")
    p.add_argument("--layers", default=layers_default, required=layers_default is None,
                   help="comma-separated layer paths, or 'all' (every conv/linear output)"
                        + (f" (default {layers_default})" if layers_default else ""))
    p.add_argument("--units", default=None,
                   help="channels of every layer ('0-15', '3,5') or units ('conv2:3,conv2:5'); default all")
    p.add_argument("--by", choices=["max", "mean"], default="max", help="rank by spatial max (default) or mean")
    p.add_argument("--limit", type=int, default=None, help="scan only the first N items")
    p.add_argument("--batch-size", type=int, default=64, help="inputs per forward pass (default 64)")
    p.add_argument("--shard-size", type=int, default=None, help="items per shard / checkpoint (default ~1024)")
    p.add_argument("--precision", choices=["float32", "bf16", "auto"], default="float32",
                   help="float32 (default); bf16: candidates in bfloat16, re-scored in float32 (top-k still exact)")
    p.add_argument("--engine", choices=["local", "ray"], default="local", help="local (default) or ray")
    p.add_argument("--address", default=None, help="Ray cluster address (default: start a local Ray)")
    p.add_argument("--workers", type=int, default=None, help="CPUs of the local Ray (default: all cores)")
    p.add_argument("--checkpoint", default=None,
                   help="checkpoint file: written after every shard; an existing one of the same scan is resumed")
    p.add_argument("--json", action="store_true", help="print the result summary as JSON")


def register(sub: argparse._SubParsersAction) -> None:
    top = sub.add_parser(
        "topk", help="each unit's top-k dataset inputs, patches and projections, with class purity",
        description="Stream a dataset through the model once and keep, for every chosen unit, the k inputs it "
                    "responds to most (ties by dataset index). Writes one montage per unit (images, receptive-field "
                    "patches, DeconvNet and guided-backprop projections, values, class purity) and index.json.")
    _scan_args(top, None)
    top.add_argument("--k", type=int, default=9, help="examples per unit (default 9)")
    top.add_argument("--projections", default="deconvnet,guided",
                     help="projection rows of each montage: deconvnet,guided (default), or 'none'")
    top.add_argument("--no-montages", action="store_true", help="write index.json and topk.json only")
    top.add_argument("-o", "--output", default="topk", type=output_folder, help="output folder (default ./topk)")
    top.set_defaults(handler=run_topk)

    st = sub.add_parser(
        "stats", help="per-unit activation statistics over a dataset, and dead units",
        description="Stream a dataset through the model once: per unit mean, std, max, fraction of inputs where it "
                    "fires (spatial max > 0), a histogram of its per-input response, and dead units (never > 0).")
    _scan_args(st, "all")
    st.add_argument("-o", "--output", default="stats", type=output_folder,
                    help="output folder for stats.csv / stats.json / stats.png")
    st.set_defaults(handler=run_stats)


def _units(text: str | None) -> Any:
    if text is None:
        return None
    parts = [p.strip() for p in text.split(",") if p.strip()]
    return parts if parts and all(":" in p for p in parts) else text


def _run_scan(args: argparse.Namespace, *, topk: bool, stats: bool, k: int = 9):
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, \
        TimeRemainingColumn
    from rich.text import Text

    from ..analysis import scan

    class Rate(ProgressColumn):
        def render(self, task: Any) -> Text:
            return Text(f"{task.speed:,.0f} items/s" if task.speed else "", style="cyan")

    spec = load_spec(args)
    layers = args.layers if args.layers == "all" else [n.strip() for n in args.layers.split(",") if n.strip()]
    console = Console(stderr=True)
    bar = Progress(TextColumn("[bold]scan"), BarColumn(), MofNCompleteColumn(), Rate(), TimeRemainingColumn(),
                   console=console, disable=not console.is_terminal)
    task = bar.add_task("scan", total=None)

    def update(done: int, total: int) -> None:
        bar.update(task, completed=done, total=total)

    try:
        with bar:
            return scan(spec, args.data, layers, k=k, by=args.by, topk=topk, stats=stats, units=_units(args.units),
                        batch_size=args.batch_size, shard_size=args.shard_size, limit=args.limit, split=args.split,
                        precision=args.precision, engine=args.engine, address=args.address, workers=args.workers,
                        checkpoint=args.checkpoint, progress=update)
    except KeyboardInterrupt:
        where = f"; {args.checkpoint} keeps every finished shard: run the same command to continue" \
            if args.checkpoint else " (give --checkpoint FILE to make a long scan resumable)"
        print(f"convscope: scan interrupted{where}", file=sys.stderr)
        raise


def _skipped_line(result: Any) -> str:
    summary = result.summary()
    line = f"scanned {summary['scanned']} of {summary['items']} items"
    if summary["skipped"]:
        first = result.skipped[0]
        line += f"; skipped {summary['skipped']} unreadable (first: {first[0]}: {first[1]})"
    return line


def run_topk(args: argparse.Namespace) -> int:
    result = _run_scan(args, topk=True, stats=False, k=args.k)
    topk = result.topk
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    index = {"recipe": topk.recipe.to_dict(), "summary": result.summary(), "layers": topk.index()}
    (out / "index.json").write_text(json.dumps(index, indent=1))
    (out / "topk.json").write_text(json.dumps(topk.to_dict()))
    projections = () if args.projections == "none" else tuple(p for p in args.projections.split(",") if p)
    written = 0
    if not args.no_montages:
        for name, layer in topk.layers.items():
            folder = out / name.replace("/", "_")
            for channel in layer.channels:
                if int(layer.indices[layer.row(channel), 0]) < 0:
                    continue
                topk.unit(name, channel, projections=projections).save(folder / f"unit-{channel}.png")
                written += 1
    if args.json:
        print_json({"output": str(out), "montages": written, **index})
        return 0
    print(_skipped_line(result))
    for name, layer in topk.layers.items():
        pure = [topk.purity(name, c) for c in layer.channels]
        fractions = sorted(p["fraction"] for p in pure)
        median = fractions[len(fractions) // 2] if fractions else 0.0
        print(f"{name}: {len(layer.channels)} units, median class purity of the top-{topk.k} {median:.0%}")
    print(f"wrote {out / 'index.json'} and {written} montages under {out}/")
    return 0


def run_stats(args: argparse.Namespace) -> int:
    result = _run_scan(args, topk=False, stats=True)
    stats = result.stats
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    rows = stats.table()
    with (out / "stats.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else ["layer", "unit"])
        writer.writeheader()
        writer.writerows(rows)
    (out / "stats.json").write_text(json.dumps(stats.to_dict()))
    stats.to_image().save(out / "stats.png")  # the recipe is inside stats.json
    if args.json:
        print_json({"output": str(out), **result.summary(), "exact": list(stats.exact)})
        return 0
    print(_skipped_line(result))
    print(f"{'layer':<24} {'units':>6} {'dead':>5} {'median active':>14} {'median sparsity':>16}")
    for s in stats.summary():
        print(f"{s['layer']:<24} {s['units']:>6} {s['dead']:>5} {s['median_active']:>14.3f} "
              f"{s['median_sparsity']:>16.3f}")
    if stats.exact != ("mean", "std", "max", "active", "hist", "dead"):
        print(f"bf16: exact statistics: {', '.join(stats.exact) or 'none'}; the others come from bfloat16 activations")
    print(f"wrote {out / 'stats.csv'}, stats.json and stats.png")
    return 0
