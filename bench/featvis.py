"""Feature visualization speed: convscope `render` (bf16 and float32) against torch-lucent 0.1.8, in one run.

Setting (the same for both tools): torchvision GoogLeNet (random weights: timing only), objective: the mean of a
channel of `inception4a`, a 128x128 image seen by the network at 128x128 (Lucent: `fixed_image_size=128`),
Fourier parameterization with decorrelated colour, Lucid's standard transforms (pad 12, jitter 8, scale, rotate,
jitter 4), Adam lr 0.05, 256 steps. Reported: seconds per channel for one channel and for batches of 8 and 16
channels (Lucent batch: `param.image(128, batch=n)` with a sum of `channel("inception4a", i, batch=i)`).
convscope runs twice per setting, `precision="bf16"` (bfloat16 autocast, channels-last) and `precision="float32"`;
Lucent is float32. The CPU model and its bf16 features are printed and saved with the result. Quality: the bf16
renders' channel activations, judged by a float32 forward of the plain model, divided by the float32 renders'
(1.0 = as strong; each render is its own local optimum, so single channels scatter around 1).

Lucent registers forward hooks on every module at every call and never removes them, so each Lucent run gets a
fresh copy of the model (otherwise it would slow down run after run; that would flatter us).

Noise: with glibc's default malloc, a render step's big temporaries (16 MB at batch 16) are handed back to the OS
and faulted in again step after step, and what that costs swings from run to run on a shared machine. It weighs
more on the faster tool. To see the compute alone, run both tools with a malloc that keeps freed memory, e.g.
`MALLOC_TRIM_THRESHOLD_=4000000000 MALLOC_MMAP_THRESHOLD_=33554432 python -m bench featvis`; `--repeats 2` or more
gives medians.

    python -m bench.featvis            # full: 256 steps
    python -m bench.featvis --quick    # smoke test: 16 steps, batches 1 and 4
    python -m bench.featvis --json     # machine-readable
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
import warnings

import torch

from ._cpu import add_malloc_option, cpu_info, describe, malloc_setting
from ._report import report

LAYER = "inception4a"
PRECISIONS = ("bf16", "float32")
TARGETS = {True: 4.0, False: 6.0}  # one channel: x4 Lucent; batches of 8 and 16: x6 per channel
SIZE = 128
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def googlenet() -> torch.nn.Module:
    from torchvision.models import googlenet as make

    torch.manual_seed(0)
    return make(weights=None, aux_logits=False, init_weights=True).eval()


def run_lucent(model: torch.nn.Module, channels: list[int], steps: int) -> tuple[float, float]:
    try:
        from lucent.optvis import objectives, param, render, transform
    except ImportError as error:  # torch-lucent is installed --no-deps; it imports `decorator` and `IPython`
        raise SystemExit(f"bench.featvis: cannot import lucent ({error}); install torch-lucent==0.1.8 with its "
                         "dependencies decorator and ipython") from None

    fresh = copy.deepcopy(model)  # Lucent leaves its hooks on the model: give it a clean one every time
    n = len(channels)
    if n == 1:
        objective = objectives.channel(LAYER, channels[0])
    else:
        objective = sum(objectives.channel(LAYER, c, batch=i) for i, c in enumerate(channels))
    start, cpu = time.perf_counter(), time.process_time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        render.render_vis(fresh, objective, lambda: param.image(SIZE, batch=n), transforms=transform.standard_transforms,
                          thresholds=(steps,), show_image=False, progress=False, fixed_image_size=SIZE)
    return time.perf_counter() - start, time.process_time() - cpu


def _spec(model: torch.nn.Module):
    from convscope.models import ModelSpec

    return ModelSpec(model, "torchvision:googlenet (random)", 3, (SIZE, SIZE), MEAN, STD)


def run_convscope(model: torch.nn.Module, channels: list[int], steps: int, precision: str
                  ) -> tuple[float, float, torch.Tensor]:
    """(wall s, CPU s, images) of one render."""
    from convscope.featvis import channel, render

    start, cpu = time.perf_counter(), time.process_time()
    vis = render(_spec(model), channel(LAYER, channels if len(channels) > 1 else channels[0]), size=SIZE,
                 steps=steps, param="fourier", optimizer="adam", lr=0.05, transforms="standard", seed=0,
                 precision=precision)
    assert vis.recipe.params["precision"] == precision
    return time.perf_counter() - start, time.process_time() - cpu, vis.images


def plain_activations(model: torch.nn.Module, images: torch.Tensor, channels: list[int]) -> torch.Tensor:
    """(B,) channel means of `images` (B, 3, H, W) in [0, 1]: a float32 forward of the model as written."""
    from convscope import accel, hooks

    spec = _spec(model)
    with accel.plain(), torch.no_grad(), hooks.frozen(model) as net, hooks.capture(net, LAYER, stop=True) as cap:
        cap.run(spec.normalize(images))
        acts = cap[LAYER]
    return acts[torch.arange(len(channels)), torch.tensor(channels)].mean((1, 2))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.featvis", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="16 steps, batches 1 and 4 (smoke test)")
    parser.add_argument("--steps", type=int, default=None, help="steps per render (default 256, quick 16)")
    parser.add_argument("--batches", default=None, help="comma-separated batch sizes (default 1,8,16)")
    parser.add_argument("--repeats", type=int, default=1, help="timings per setting; the median is reported")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads for both tools (default 1, as bench.attribution: steadier on a shared "
                             "machine, where idle OpenMP threads spin and blur both clocks)")
    parser.add_argument("--save", action="store_true", help="also write bench/results/featvis.json")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    add_malloc_option(parser)
    args = parser.parse_args(argv)
    malloc = malloc_setting(args.keep_freed_memory)
    if args.threads:
        torch.set_num_threads(args.threads)
    steps = args.steps or (16 if args.quick else 256)
    sizes = [int(b) for b in args.batches.split(",")] if args.batches else ([1, 4] if args.quick else [1, 8, 16])
    cpu = cpu_info()
    if not args.json:
        print(describe(cpu), f"| torch {torch.__version__}, {torch.get_num_threads()} thread(s) | malloc: {malloc}",
              flush=True)
    model = googlenet()
    # warm up every tool (first-call allocations, oneDNN primitives, the bf16 check of precision="auto")
    run_lucent(model, [0], 2)
    for precision in PRECISIONS:
        run_convscope(model, [0], 2, precision)
    rows = []
    for n in sizes:
        channels = list(range(n))
        theirs, ours = [], {p: [] for p in PRECISIONS}
        for _ in range(args.repeats):  # interleave, so load changes on a shared machine hit every run alike
            theirs.append(run_lucent(model, channels, steps))
            for precision in PRECISIONS:
                ours[precision].append(run_convscope(model, channels, steps, precision))
        row = {"batch": n, "steps": steps}
        for k, clock in enumerate(("wall", "cpu")):
            lucent_s = statistics.median(t[k] for t in theirs)
            row[f"lucent_{clock}_s_per_channel"] = lucent_s / n
            for precision in PRECISIONS:
                ours_s = statistics.median(t[k] for t in ours[precision])
                row[f"{precision}_{clock}_s_per_channel"] = ours_s / n
                row[f"{precision}_speedup_{clock}"] = lucent_s / ours_s
            row[f"all_speedups_{clock}"] = {p: [t_l[k] / t_o[k] for t_l, t_o in zip(theirs, ours[p])]
                                           for p in PRECISIONS}
        strong = {p: plain_activations(model, ours[p][-1][2], channels) for p in PRECISIONS}
        live = strong["float32"] > 0  # random weights: a channel may stay at 0 in both renders
        ratio = strong["bf16"][live] / strong["float32"][live] if live.any() else torch.ones(1)
        row["bf16_over_float32_activation"] = {"median": float(ratio.median()), "min": float(ratio.min()),
                                               "max": float(ratio.max()), "channels": int(live.sum()),
                                               "bf16": strong["bf16"].tolist(), "float32": strong["float32"].tolist()}
        rows.append(row)
        if not args.json:
            print(f"batch {n:2d} (CPU s/channel): lucent {row['lucent_cpu_s_per_channel']:6.2f} | bf16 "
                  f"{row['bf16_cpu_s_per_channel']:6.2f} x{row['bf16_speedup_cpu']:.2f} | float32 "
                  f"{row['float32_cpu_s_per_channel']:6.2f} x{row['float32_speedup_cpu']:.2f} | bf16/float32 "
                  f"activation median {ratio.median():.3f} (min {ratio.min():.3f}, max {ratio.max():.3f})",
                  flush=True)
    # CPU time (process_time) is the fairer clock on a shared machine: other jobs' load does not count in it
    # the targets are for full renders: a few steps weigh each render's setup (probe, folding) far more
    judged = steps >= 256
    verdict = all(r["bf16_speedup_cpu"] >= TARGETS[r["batch"] == 1] for r in rows) if judged else None
    payload = {"benchmark": "featvis", "layer": LAYER, "size": SIZE, "torch": torch.__version__, "cpu": cpu,
               "malloc": malloc,
               "threads": torch.get_num_threads(), "repeats": args.repeats, "rows": rows,
               "targets": f"bf16: x{TARGETS[True]:g} for one channel, x{TARGETS[False]:g} per channel in a batch "
                          "(CPU time, 256 steps)", "targets_met": verdict}
    outcome = ("met" if verdict else "NOT met") if judged else f"not judged ({steps} steps; they are for 256)"
    report("featvis", payload, save=args.save, as_json=args.json,
           summary=f"targets (bf16: x{TARGETS[True]:g} single, x{TARGETS[False]:g} per channel in a batch; CPU "
                   f"time): {outcome}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
