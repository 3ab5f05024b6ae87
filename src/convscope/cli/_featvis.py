"""`convscope visualize` (units, channels, layers), `convscope class-model` (Simonyan et al.) and `convscope dream`
(DeepDream from a photo): thin commands over `convscope.featvis`."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

from ..errors import ConvscopeError, UnitSyntaxError
from ._common import add_model_args, add_output, load_spec, print_json
from ._limits import check_fits, parse_size


def parse_units(text: str) -> list[int]:
    """`"0-63"`, `"3,5,9"`, `"0-7,12"` -> channel indices, in order, without duplicates."""
    units: list[int] = []
    for part in text.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not match:
            raise UnitSyntaxError(f"cannot read units {text!r}; write e.g. '0-63', '3,5,9' or '0-7,12'")
        first = int(match.group(1))
        last = int(match.group(2)) if match.group(2) is not None else first
        if last < first:
            raise UnitSyntaxError(f"units {text!r}: range {part.strip()!r} runs backwards")
        units.extend(range(first, last + 1))
    return list(dict.fromkeys(units))


def _size(text: str | None) -> int | tuple[int, int] | None:
    return None if text is None else parse_size(text)


def _progress(label: str):
    from ._common import progress

    bar = progress(label)
    task = bar.add_task(label, total=None)

    def update(done: int, total: int) -> None:
        bar.update(task, completed=done, total=total)

    return bar, update


def add_precision(parser: argparse.ArgumentParser, default: str = "auto") -> None:
    """`--precision auto|float32|bf16` (see `convscope.accel`)."""
    parser.add_argument("--precision", choices=("auto", "float32", "bf16"), default=default,
                        help=f"what the network runs in (default {default}): bf16 = bfloat16 autocast, channels-last; "
                             "auto = bf16 where a short measured check finds it faster for this network; the image "
                             "and optimizer stay float32")


def register(sub: argparse._SubParsersAction) -> None:
    vis = sub.add_parser("visualize", help="synthesize the image a unit, channel or layer responds to most",
                         description="Feature visualization: gradient ascent from noise (or --init IMAGE) in a "
                                     "Fourier, colour-decorrelated parameterization with random jitter, scale and "
                                     "rotation. --units renders many channels in one batched run into a grid.")
    add_model_args(vis)
    vis.add_argument("--layer", required=True, help="layer path (see `convscope layers MODEL`)")
    group = vis.add_mutually_exclusive_group()
    group.add_argument("--unit", type=int, default=None, help="channel index (default: the whole layer, L2)")
    group.add_argument("--units", default=None, help="many channels in one batched run: '0-63', '3,5,9'")
    vis.add_argument("--neuron", default=None, metavar="ROW,COL",
                     help="one spatial position of the channel instead of its mean ('c' = centre)")
    vis.add_argument("--size", default=None, help="image size: 128 or HxW (default: the model's input size)")
    vis.add_argument("--steps", type=int, default=256, help="steps per octave (default 256)")
    vis.add_argument("--octaves", type=int, default=1, help="optimize at this many growing sizes (default 1)")
    vis.add_argument("--outscale", type=float, default=1.0, help="final size = size x outscale (default 1)")
    vis.add_argument("--sharpness", type=float, default=None,
                     help="add edge + colour penalties: 0 smooth .. 10 sharp (default: none)")
    vis.add_argument("--param", choices=("auto", "fourier", "pixel"), default="auto",
                     help="default auto: fourier from 64 px up, pixel below")
    vis.add_argument("--optimizer", choices=("adam", "ascent", "laplacian", "smooth"), default="adam",
                     help="default adam")
    vis.add_argument("--lr", type=float, default=None, help="step size (default: the optimizer's)")
    vis.add_argument("--transforms", choices=("auto", "standard", "none"), default="auto",
                     help="random pad/jitter/scale/rotate per step (default auto: standard from 64 px up)")
    vis.add_argument("--init", default=None, help="start from this image (default: seeded noise)")
    vis.add_argument("--batch", type=int, default=None, help="units per optimization run (default: all)")
    vis.add_argument("--memory-budget", default=None, help="e.g. 2GB: choose the batch size to fit")
    vis.add_argument("--columns", type=int, default=None, help="grid columns")
    add_precision(vis)
    add_output(vis, "visualize.png", "print the activations and the recipe as JSON")
    vis.set_defaults(handler=run_visualize)

    cm = sub.add_parser("class-model", help="the image a class scores highest on (Simonyan et al. 2014)",
                        description="argmax_I S_c(I) - lambda ||I|| by gradient ascent on pixels, from noise or "
                                    "the mean image of the class (--init mean --data D).")
    add_model_args(cm)
    cm.add_argument("--target", required=True, help="class name or index; comma-separated for several")
    cm.add_argument("--init", default="noise", help="noise (default), grey, mean (needs --data) or an image file")
    cm.add_argument("--data", default=None, help="dataset for --init mean: fashion-mnist, a folder, .npz, IDX")
    cm.add_argument("--penalty", choices=("l2", "l1"), default="l2", help="default l2 (the paper)")
    cm.add_argument("--weight", type=float, default=None, help="lambda (default 0.1 for l2, 0.05 for l1)")
    cm.add_argument("--steps", type=int, default=256, help="default 256")
    cm.add_argument("--param", choices=("auto", "fourier", "pixel"), default="auto",
                    help="default auto: fourier (with Adam and Lucid's transforms) from 64 px up; the paper: "
                         "--param pixel --optimizer ascent")
    cm.add_argument("--optimizer", choices=("adam", "ascent", "smooth"), default="adam", help="default adam")
    cm.add_argument("--lr", type=float, default=None)
    cm.add_argument("--size", default=None, help="image size (default: the model's input size)")
    cm.add_argument("--octaves", type=int, default=1)
    cm.add_argument("--outscale", type=float, default=1.0)
    add_precision(cm)
    add_output(cm, "class-model.png", "print the activations and the recipe as JSON")
    cm.set_defaults(handler=run_class_model)

    dr = sub.add_parser("dream", help="DeepDream: amplify what a layer sees in a photo",
                        description="Laplacian-pyramid normalized gradient ascent on the photo's pixels, over "
                                    "octaves, with jitter; large photos are optimized in tiles.")
    add_model_args(dr)
    dr.add_argument("image", help="photo to dream on")
    dr.add_argument("--layer", required=True, help="layer whose activations to amplify")
    dr.add_argument("--unit", type=int, default=None, help="amplify one channel instead of the whole layer")
    dr.add_argument("--octaves", type=int, default=4, help="default 4 (scale 1.4 between octaves)")
    dr.add_argument("--steps", type=int, default=10, help="steps per octave (default 10)")
    dr.add_argument("--lr", type=float, default=None, help="step size (default 0.002 of the pixel range)")
    dr.add_argument("--levels", type=int, default=4, help="Laplacian pyramid levels (default 4)")
    dr.add_argument("--tile", type=int, default=None, help="tile size (default 2x the model's input size)")
    dr.add_argument("--size", default=None, help="resize the photo first: 512 or HxW")
    add_precision(dr)
    add_output(dr, "dream.png", "print the activations and the recipe as JSON")
    dr.set_defaults(handler=run_dream)


def _report(vis: Any, path: Path, extra: dict[str, Any]) -> dict[str, Any]:
    return {
        **extra,
        "output": str(path),
        "items": [{"label": label, "activation": float(v), "start_activation": float(s), "dead": i in vis.dead}
                  for i, (label, v, s) in enumerate(zip(vis.labels, vis.values, vis.start_values))],
        "dead": vis.dead,
        "recipe": vis.recipe.to_dict(),
    }


def _print_summary(vis: Any, path: Path) -> None:
    for i, (label, v, s) in enumerate(zip(vis.labels, vis.values, vis.start_values)):
        if i >= 8:
            print(f"... {len(vis) - 8} more")
            break
        state = "dead (never activated)" if i in vis.dead else f"{float(s):.4g} -> {float(v):.4g}"
        print(f"{label}: {state}")
    print(f"wrote {path}")


def run_visualize(args: argparse.Namespace) -> int:
    from ..featvis import channel, layer, neuron, render, sharpness

    spec = load_spec(args)
    units: int | list[int] | None = parse_units(args.units) if args.units else args.unit
    if args.neuron is not None:
        if units is None:
            raise ConvscopeError("--neuron needs --unit or --units")
        parts = args.neuron.split(",")
        if len(parts) != 2:
            raise UnitSyntaxError(f"--neuron {args.neuron!r}: write ROW,COL or c,c")
        row, col = (None if p.strip() == "c" else int(p) for p in parts)
        objective = neuron(args.layer, units, row, col)
    elif units is None:
        objective = layer(args.layer)
    else:
        objective = channel(args.layer, units)
    size = _size(args.size)
    if args.init is not None and size is None:
        size = tuple(spec.input_size)
    check_fits(spec, size or spec.input_size, scale=args.outscale)
    bar, update = _progress("visualize")
    with bar:
        vis = render(spec, objective, param=args.param, size=size, steps=args.steps, optimizer=args.optimizer,
                     lr=args.lr, transforms=None if args.transforms == "none" else args.transforms,
                     regularizers=sharpness(args.sharpness) if args.sharpness is not None else (),
                     octaves=args.octaves, outscale=args.outscale, init=args.init, seed=args.seed, batch=args.batch,
                     memory_budget=args.memory_budget, precision=args.precision, progress=update)
    path = vis.save(args.output, columns=args.columns)  # captioned as the API's save(), one unit or many
    if args.json:
        print_json(_report(vis, path, {"model": spec.name, "layer": args.layer, "objective": str(objective)}))
    else:
        _print_summary(vis, path)
    return 0


def run_class_model(args: argparse.Namespace) -> int:
    from ..featvis import class_model

    spec = load_spec(args)
    targets = [t.strip() for t in args.target.split(",") if t.strip()]
    targets = [int(t) if t.lstrip("-").isdigit() else t for t in targets]
    size = _size(args.size)
    check_fits(spec, size or spec.input_size, scale=args.outscale)
    bar, update = _progress("class-model")
    with bar:
        vis = class_model(spec, targets if len(targets) > 1 else targets[0], penalty=args.penalty,
                          weight=args.weight, init=args.init, data=args.data, steps=args.steps, param=args.param,
                          optimizer=args.optimizer, lr=args.lr, size=size, octaves=args.octaves,
                          outscale=args.outscale, seed=args.seed, precision=args.precision, progress=update)
    vis = _named(vis, spec)
    path = vis.save(args.output)
    if args.json:
        print_json(_report(vis, path, {"model": spec.name, "targets": targets}))
    else:
        _print_summary(vis, path)
    return 0


def _named(vis: Any, spec: Any) -> Any:
    """Labels 'class 1' -> 'goldfish' when the model knows its class names."""
    from dataclasses import replace

    labels = [spec.class_name(int(lab.split()[1])) if lab.startswith("class ") and lab.split()[1].isdigit()
              else lab for lab in vis.labels]
    return replace(vis, labels=labels)


def run_dream(args: argparse.Namespace) -> int:
    from ..featvis import channel, dream

    spec = load_spec(args)
    objective = channel(args.layer, args.unit) if args.unit is not None else None
    size = _size(args.size)
    check_fits(spec, size or spec.input_size, network=False)  # the network sees tiles; the photo is kept whole
    bar, update = _progress("dream")
    with bar:
        vis = dream(spec, args.image, layer=args.layer, objective=objective, octaves=args.octaves,
                    steps=args.steps, lr=args.lr, levels=args.levels, tile=args.tile, size=size,
                    seed=args.seed, precision=args.precision, progress=update)
    path = vis.save(args.output, labels=False)
    if args.json:
        print_json(_report(vis, path, {"model": spec.name, "layer": args.layer, "image": args.image}))
    else:
        _print_summary(vis, path)
    return 0
