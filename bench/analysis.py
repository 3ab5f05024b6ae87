"""Dataset scans: how close the top-k + statistics pass runs to the plain forward pass, what bf16 buys, and whether
memory stays flat as the dataset grows.

Throughput: the scan (top-k + statistics) against the plain float32 forward pass of the same model over the same
batches from the same dataset (data loading included in both), runs interleaved (plain, scan, bf16 scan, bf16
forward, plain, ...) so machine noise hits all alike. Each run is timed by the wall clock and by the process's CPU
time (`time.process_time`, which other processes' load does not inflate); ratios are reported per repetition (the
runs of one repetition are minutes apart at most) and as the median, with their range. `--threads` pins torch's
threads (default 1, as the other benchmarks: on a shared 2-core machine two threads spend much of their time
waiting for each other at every parallel region, which measures the scheduler rather than the scan).

The "bf16 forward" run is the ceiling of a bf16 scan: the plain model's forward in bfloat16 as the scan's bf16 pass
runs it (a private copy with BatchNorm folded and channels-last weights, under autocast), nothing else. A bf16
scan is exact, so it also re-scores candidates in float32; its ratio is bounded by this forward's. The "float32
copy" run is the same private copy in float32: how much of that ceiling is the layout and the folding, not bfloat16.

Memory: each run in a fresh subprocess, Fashion-MNIST 10k (test split) vs 60k (train split): the peak resident
size during the scan itself (the high-water mark is reset after the warm-up through /proc/self/clear_refs; the
process's lifetime peak, set by imports and the warm-up, hides the scan), and its growth above the RSS before it.

    python -m bench analysis                 # fashion-cnn 10k, MobileNetV2 on 1024 photos, memory 10k vs 60k
    python -m bench analysis --quick         # smaller, for a smoke test
    python -m bench analysis --save          # also write bench/results/analysis.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np
import torch

from ._cpu import add_malloc_option, cpu_info, describe, malloc_setting
from ._report import RESULTS, report

FASHION_LAYERS = (["conv1", "conv2"], "all")
MOBILE_LAYERS = ["features.4", "features.7", "features.10", "features.14"]


def photo_crops(count: int, size: int = 224, seed: int = 0):
    """`count` crops of scikit-image's sample photos (random position and scale, seeded) as an image dataset: the
    stand-in when the `photos` dataset (`python -m convscope.data.photos`) is not built."""
    import skimage.data

    from convscope.data import ArrayDataset

    names = ("chelsea", "coffee", "astronaut", "rocket", "motorcycle_left", "immunohistochemistry")
    photos = [getattr(skimage.data, n)()[..., :3] for n in names if hasattr(skimage.data, n)]
    rng = np.random.default_rng(seed)
    crops, labels = [], []
    for i in range(count):
        label = i % len(photos)
        photo = torch.from_numpy(photos[label]).permute(2, 0, 1).float()[None] / 255
        side = int(rng.integers(size // 2, min(photo.shape[-2:]) + 1))
        y = int(rng.integers(0, photo.shape[-2] - side + 1))
        x = int(rng.integers(0, photo.shape[-1] - side + 1))
        crop = torch.nn.functional.interpolate(photo[..., y:y + side, x:x + side], size=(size, size),
                                               mode="bilinear", antialias=True, align_corners=False)
        crops.append((crop[0].permute(1, 2, 0).clamp(0, 1) * 255).round().byte().numpy())
        labels.append(label)
    return ArrayDataset(np.stack(crops), np.array(labels), [n for n in names if hasattr(skimage.data, n)])


def photos(count: int):
    """The first `count` items (spread over every source photo) of the `photos` dataset, else `photo_crops`."""
    from convscope.data import Subset, resolve
    from convscope.errors import ConvscopeError

    try:
        folder = resolve("photos")
    except ConvscopeError:
        return photo_crops(count), "photo_crops (skimage)"
    step = max(1, len(folder) // count)
    return Subset(folder, range(0, step * count, step)[:count]), f"photos ({len(folder)} crops, every {step}th)"


def plain_pass(spec, dataset, batch_size: int, limit: int | None, bf16: bool = False, copy: bool = False) -> None:
    """The model's forward over the dataset's batches, nothing kept; with `bf16`, as the scan's bf16 pass runs it;
    with `copy` alone, that pass's private copy (BatchNorm folded, channels-last) in float32: what the layout and
    the folding give without bfloat16."""
    from convscope import data, hooks
    from convscope.analysis._engine import _bf16_network

    with hooks.frozen(spec.module) as net, torch.inference_mode():
        if bf16 or copy:
            net = _bf16_network(net, spec.example_input(), [])
        for batch in data.batches(dataset, spec, batch_size, limit=limit):
            if bf16:
                with torch.autocast(batch.inputs.device.type, dtype=torch.bfloat16):
                    net(batch.inputs.contiguous(memory_format=torch.channels_last))
            elif copy:
                net(batch.inputs.contiguous(memory_format=torch.channels_last))
            else:
                net(batch.inputs)


def _ratios(runs: dict[str, list[tuple[float, float]]], kind: str) -> dict:
    """Throughput of `kind` over the plain forward's: per repetition and median, by wall clock and CPU time."""
    out = {}
    for clock, i in (("wall", 0), ("cpu", 1)):
        per = [p[i] / r[i] for p, r in zip(runs["plain"], runs[kind])]
        median = statistics.median(p[i] for p in runs["plain"]) / statistics.median(r[i] for r in runs[kind])
        out[clock] = {"median": round(median, 3), "per_rep": [round(x, 3) for x in per],
                      "range": [round(min(per), 3), round(max(per), 3)]}
    return out


def throughput(name: str, spec, dataset, layers, *, batch_size: int, limit: int | None, reps: int,
               bf16: bool = True) -> dict:
    from convscope import analysis

    items = len(dataset) if limit is None else min(limit, len(dataset))
    kinds = ["plain", "scan"] + (["scan_bf16", "plain_bf16", "plain_copy"] if bf16 else [])
    runs: dict[str, list[tuple[float, float]]] = {kind: [] for kind in kinds}
    reports = []

    def run(kind: str, count: int | None) -> None:
        if kind.startswith("plain"):
            plain_pass(spec, dataset, batch_size, count, bf16=kind == "plain_bf16", copy=kind == "plain_copy")
        else:
            result = analysis.scan(spec, dataset, layers, batch_size=batch_size, limit=count,
                                   precision="bf16" if kind == "scan_bf16" else "float32")
            if kind == "scan_bf16" and count == limit:
                reports.append(result.bf16)

    for kind in kinds:  # warm-up on two batches: libraries, oneDNN primitives, the allocator
        run(kind, 2 * batch_size)
    load = [round(os.getloadavg()[0], 2)]
    for _ in range(reps):
        for kind in kinds:
            wall, cpu = time.perf_counter(), time.process_time()
            run(kind, limit)
            runs[kind].append((time.perf_counter() - wall, time.process_time() - cpu))
        load.append(round(os.getloadavg()[0], 2))
    out = {"model": name, "layers": layers, "items": items, "batch_size": batch_size, "reps": reps,
           "load_average": load,
           "items_per_s_wall": {k: [round(items / w, 1) for w, _ in r] for k, r in runs.items()},
           "scan_vs_plain": _ratios(runs, "scan")}
    if bf16:
        out["bf16_scan_vs_plain_float32"] = _ratios(runs, "scan_bf16")
        out["bf16_forward_vs_plain_float32"] = _ratios(runs, "plain_bf16")
        out["float32_copy_forward_vs_plain_float32"] = _ratios(runs, "plain_copy")
        out["bf16_report"] = reports[-1] if reports else None
    return out


_MEMORY = """
import gc, json, resource, sys, torch, psutil
torch.set_num_threads({threads})
from convscope import analysis, data
from convscope.models import load


def hwm():
    return next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmHWM"))


spec = load("convscope:fashion-cnn")
dataset = data.resolve("fashion-mnist", split="{split}")
analysis.scan(spec, dataset, ["conv1"], limit=64, precision="{precision}")  # warm: libraries, oneDNN
gc.collect()
try:  # reset the high-water mark (Linux), so the peak is the scan's own, not the imports' or the warm-up's
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    reset = True
except OSError:
    reset = False
base = psutil.Process().memory_info().rss
result = analysis.scan(spec, dataset, ["conv1", "conv2", "fc1"], batch_size=64, precision="{precision}")
process_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
peak = hwm() if reset else process_peak
print(json.dumps({{"items": result.items, "peak_mb": peak / 2**20, "baseline_mb": base / 2**20,
                  "process_peak_mb": process_peak / 2**20, "peak_is_the_scans": reset}}))
"""


def memory(split: str, threads: int, precision: str = "float32") -> dict:
    code = _MEMORY.format(split=split, threads=threads, precision=precision)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _line(r: dict) -> str:
    layers = r["layers"] if isinstance(r["layers"], str) else ",".join(r["layers"])
    s = r["scan_vs_plain"]
    text = (f"{r['model']} {layers}: scan/plain cpu {s['cpu']['median']} {s['cpu']['range']}, "
            f"wall {s['wall']['median']} {s['wall']['range']}")
    if "bf16_scan_vs_plain_float32" in r:
        b, f = r["bf16_scan_vs_plain_float32"], r["bf16_forward_vs_plain_float32"]
        text += (f"; bf16 scan/plain float32 cpu {b['cpu']['median']} {b['cpu']['range']}, wall {b['wall']['median']}"
                 f"; bf16 forward alone cpu {f['cpu']['median']}, wall {f['wall']['median']}")
        if "float32_copy_forward_vs_plain_float32" in r:
            c = r["float32_copy_forward_vs_plain_float32"]
            text += f"; its float32 copy alone cpu {c['cpu']['median']}, wall {c['wall']['median']}"
    return text


def main(argv: list[str] | None = None) -> int:
    from convscope.models import load

    parser = argparse.ArgumentParser(prog="python -m bench analysis", description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--photos", type=int, default=1024, help="MobileNetV2 photo crops (default 1024)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--save", action="store_true", help="write bench/results/analysis.json")
    parser.add_argument("--only", choices=["fashion", "mobilenet", "memory"], action="append",
                        help="run only these parts (repeatable; default all)")
    add_malloc_option(parser)
    args = parser.parse_args(argv)
    malloc = malloc_setting(args.keep_freed_memory)
    torch.set_num_threads(args.threads)
    if args.quick:
        args.reps, args.photos = 1, 64
    parts = set(args.only or ["fashion", "mobilenet", "memory"])
    cpu = cpu_info()
    print(f"{describe(cpu)}; torch {torch.__version__}, "
          f"{args.threads} threads; load average {os.getloadavg()[0]:.1f}; malloc: {malloc}", flush=True)
    rows = []
    data_note = {}
    if "fashion" in parts:
        from convscope.data import resolve

        fashion = load("convscope:fashion-cnn")
        test = resolve("fashion-mnist")
        limit = 2048 if args.quick else None
        data_note["fashion"] = f"Fashion-MNIST test split, {limit or len(test)} images"
        for layers in FASHION_LAYERS:
            rows.append(throughput("convscope:fashion-cnn", fashion, test, layers, batch_size=256, limit=limit,
                                   reps=args.reps))
            print(_line(rows[-1]), flush=True)
    if "mobilenet" in parts:
        mobile = load("torchvision:mobilenet_v2@IMAGENET1K_V1")
        crops, note = photos(args.photos)
        data_note["mobilenet"] = f"{len(crops)} images of {note}"
        for layers in (MOBILE_LAYERS, "all"):
            rows.append(throughput("torchvision:mobilenet_v2@IMAGENET1K_V1", mobile, crops, layers, batch_size=32,
                                   limit=None, reps=args.reps, bf16=layers != "all"))
            print(_line(rows[-1]), flush=True)
    mem: dict = {}
    if "memory" in parts:
        for precision in ("float32", "bf16"):
            got = {split: memory(split, args.threads, precision) for split in ("test", "train")}
            small, large = got["test"], got["train"]
            got["peak_ratio_60k_10k"] = round(large["peak_mb"] / small["peak_mb"], 3)
            got["scan_growth_ratio_60k_10k"] = round((large["peak_mb"] - large["baseline_mb"])
                                                     / max(1e-9, small["peak_mb"] - small["baseline_mb"]), 3)
            got["load_average"] = round(os.getloadavg()[0], 2)
            mem[precision] = got
            print(precision, json.dumps(got), flush=True)
    payload = {"cpu": cpu["model"], "cpu_bf16_features": cpu["bf16_features"], "torch": torch.__version__,
               "malloc": malloc, "threads": args.threads, "quick": args.quick, "data": data_note, "throughput": rows, "memory": mem}
    lines = [_line(r) for r in rows]
    for precision, got in mem.items():
        lines.append(f"memory {precision} 60k/10k peak {got['peak_ratio_60k_10k']} "
                     f"(scan's own growth {got['scan_growth_ratio_60k_10k']})")
    if args.only and args.save and (RESULTS / "analysis.json").is_file():  # a partial run updates its parts
        saved = json.loads((RESULTS / "analysis.json").read_text())
        ran = {(r["model"], str(r["layers"])) for r in rows}
        rows = [r for r in saved.get("throughput", []) if (r["model"], str(r["layers"])) not in ran] + rows
        payload = {**saved, **payload, "throughput": rows, "memory": mem or saved.get("memory", {}),
                   "data": {**saved.get("data", {}), **data_note}, "partial_updates": saved.get("partial_updates", [])
                   + [{"parts": sorted(parts), "cpu": cpu["model"], "load_average": round(os.getloadavg()[0], 2)}]}
    with contextlib.suppress(BrokenPipeError):
        report("analysis", payload, save=args.save, as_json=args.json, summary="\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
