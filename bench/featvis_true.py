"""True, not only pretty, on ImageNet MobileNetV2: does each rendered channel excite its channel more than the
sample photos do, in bf16 as in float32?

For every layer, the first `--channels` channels are rendered in one batched `render` per precision (defaults:
Fourier parameterization, Lucid's transforms, Adam) at the model's input size. Each render is judged by a float32
forward of the plain model (`accel.plain()`, no folding): its channel mean is compared with the highest channel mean
over scikit-image's sample photos (preprocessed as the weights prescribe), and the bf16 render's activation with the
float32 render's.

    python -m bench.featvis_true                      # features.4, .7, .10, .14; 8 channels each; 256 steps
    python -m bench.featvis_true --layers features.10 --channels 16 --steps 128 --json
    python -m bench.featvis_true --precisions bf16          # one precision only
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from ._cpu import cpu_info, describe
from ._report import report

PHOTOS = ("chelsea", "coffee", "astronaut", "rocket", "motorcycle_left", "hubble_deep_field", "immunohistochemistry")


def photos(spec) -> torch.Tensor:
    import skimage.data

    images = [getattr(skimage.data, name)() for name in PHOTOS if hasattr(skimage.data, name)]
    return torch.cat([spec.preprocess(image[..., :3]) for image in images])


def judged(spec, layer: str, images: torch.Tensor, units: list[int]) -> torch.Tensor:
    """(N,) channel means of rendered `images` (N, C, H, W) in [0, 1]: a float32 forward of the plain model."""
    from convscope import accel, hooks

    with accel.plain(), torch.no_grad(), hooks.frozen(spec.module) as net, \
            hooks.capture(net, layer, stop=True) as cap:
        cap.run(spec.normalize(images.to(spec.device, spec.dtype)))
        acts = cap[layer]
    return acts[torch.arange(len(units)), torch.tensor(units)].mean((1, 2)).float().cpu()


def main(argv: list[str] | None = None) -> int:
    from convscope import hooks
    from convscope.featvis import channel, render
    from convscope.models import load

    parser = argparse.ArgumentParser(prog="python -m bench.featvis_true", description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="torchvision:mobilenet_v2@IMAGENET1K_V1")
    parser.add_argument("--layers", default="features.4,features.7,features.10,features.14")
    parser.add_argument("--channels", type=int, default=8, help="first N channels of each layer (default 8)")
    parser.add_argument("--steps", type=int, default=256)
    parser.add_argument("--size", type=int, default=None, help="render size (default: the model's input size)")
    parser.add_argument("--quick", action="store_true", help="smoke test: 2 layers, 4 channels, 32 steps")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--save", action="store_true", help="also write bench/results/featvis_true.json")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--precisions", default="bf16,float32", help="comma-separated (default bf16,float32)")
    args = parser.parse_args(argv)
    precisions = args.precisions.split(",")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.layers, args.channels, args.steps = "features.4,features.10", 4, 32
    cpu = cpu_info()
    if not args.json:
        print(describe(cpu), flush=True)
    spec = load(args.model)
    layers = args.layers.split(",")
    inputs = photos(spec)
    with torch.no_grad(), hooks.frozen(spec.module) as net, hooks.capture(net, layers) as cap:
        net(inputs)
        natural = {name: cap[name].mean((2, 3)).amax(0) for name in layers}
    rows = []
    for name in layers:
        units = list(range(min(args.channels, natural[name].numel())))
        strength = {}
        for precision in precisions:
            start = time.perf_counter()
            vis = render(spec, channel(name, units), size=args.size, steps=args.steps, seed=0, precision=precision)
            strength[precision] = judged(spec, name, vis.images, units)
            for i, unit in enumerate(units):
                value = float(strength[precision][i])
                rows.append({"layer": name, "channel": unit, "precision": vis.recipe.params["precision"],
                             "rendered": value, "best_photo": float(natural[name][unit]), "dead": i in vis.dead,
                             "beats": bool(value > natural[name][unit]), "seconds": time.perf_counter() - start})
            if not args.json:
                mine = [r for r in rows if r["layer"] == name and r["precision"] == vis.recipe.params["precision"]]
                ratio = [r["rendered"] / r["best_photo"] for r in mine if r["best_photo"] > 0]
                print(f"{name} {precision}: {sum(r['beats'] for r in mine)}/{len(mine)} channels beat all "
                      f"{len(inputs)} photos; rendered/best photo min {min(ratio):.2f} median "
                      f"{sorted(ratio)[len(ratio) // 2]:.2f} ({time.perf_counter() - start:.0f} s)", flush=True)
        if {"bf16", "float32"} <= set(strength) and not args.json:
            ratio = strength["bf16"] / strength["float32"]
            print(f"{name}: bf16 / float32 activation of the renders: median {ratio.median():.3f}, "
                  f"min {ratio.min():.3f}, max {ratio.max():.3f}", flush=True)
    summary = {"model": args.model, "photos": len(inputs), "steps": args.steps, "cpu": cpu, "rows": rows,
               "all_beat": all(r["beats"] for r in rows),
               "all_beat_by_precision": {p: all(r["beats"] for r in rows if r["precision"] == p) for p in precisions}}
    report("featvis_true", summary, save=args.save, as_json=args.json,
           summary=f"all rendered channels beat every photo: {summary['all_beat_by_precision']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
