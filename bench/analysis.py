"""Dataset scans: how close the top-k + statistics pass runs to the plain forward pass, what bf16 buys, and whether
memory stays flat as the dataset grows.

Throughput: the scan (top-k + statistics, float32) against the plain float32 forward pass of the same model over the
same batches from the same dataset (data loading included in both), runs interleaved (plain, scan, bf16 scan,
plain, ...) so machine noise hits all alike; the ratio of medians is reported with the spread over repetitions.
Memory: each run in a fresh subprocess (ru_maxrss), Fashion-MNIST 10k (test split) vs 60k (train split).

    python -m bench analysis                 # fashion-cnn 10k + MobileNetV2 on photo crops, memory 10k vs 60k
    python -m bench analysis --quick         # smaller, for a smoke test
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time

import numpy as np
import torch

from ._report import report


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def photo_crops(count: int, size: int = 224, seed: int = 0):
    """`count` crops of scikit-image's sample photos (random position and scale, seeded) as an image dataset."""
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


def plain_pass(spec, dataset, batch_size: int, limit: int | None) -> None:
    from convscope import data, hooks

    with hooks.frozen(spec.module) as net, torch.inference_mode():
        for batch in data.batches(dataset, spec, batch_size, limit=limit):
            net(batch.inputs)


def throughput(name: str, spec, dataset, layers, *, batch_size: int, limit: int | None, reps: int,
               bf16: bool = True) -> dict:
    from convscope import analysis

    items = len(dataset) if limit is None else min(limit, len(dataset))
    runs: dict[str, list[float]] = {"plain": [], "scan": [], "scan_bf16": []}
    report_bf16 = None
    for rep in range(reps + 1):  # the first round warms up (oneDNN primitives, allocator)
        for kind in runs:
            if kind == "scan_bf16" and not bf16:
                continue
            start = time.perf_counter()
            if kind == "plain":
                plain_pass(spec, dataset, batch_size, limit)
            else:
                result = analysis.scan(spec, dataset, layers, batch_size=batch_size, limit=limit,
                                       precision="bf16" if kind == "scan_bf16" else "float32")
                if kind == "scan_bf16":
                    report_bf16 = result.bf16
            if rep:
                runs[kind].append(items / (time.perf_counter() - start))
    plain = statistics.median(runs["plain"])
    out = {"model": name, "layers": layers, "items": items, "batch_size": batch_size, "reps": reps,
           "items_per_s": {k: [round(v, 1) for v in r] for k, r in runs.items() if r},
           "scan_vs_plain": round(statistics.median(runs["scan"]) / plain, 3),
           "scan_vs_plain_range": [round(min(runs["scan"]) / max(runs["plain"]), 3),
                                   round(max(runs["scan"]) / min(runs["plain"]), 3)]}
    if bf16:
        out["bf16_scan_vs_plain_float32"] = round(statistics.median(runs["scan_bf16"]) / plain, 3)
        out["bf16_report"] = report_bf16
    return out


_MEMORY = """
import json, resource, sys, torch, psutil
torch.set_num_threads({threads})
from convscope import analysis, data
from convscope.models import load
spec = load("convscope:fashion-cnn")
dataset = data.resolve("fashion-mnist", split="{split}")
analysis.scan(spec, dataset, ["conv1"], limit=64)  # warm: libraries, oneDNN
base = psutil.Process().memory_info().rss
result = analysis.scan(spec, dataset, ["conv1", "conv2", "fc1"], batch_size=64)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({{"items": result.items, "peak_mb": peak / 2**20, "baseline_mb": base / 2**20}}))
"""


def memory(split: str, threads: int) -> dict:
    code = _MEMORY.format(split=split, threads=threads)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    from convscope.models import load

    parser = argparse.ArgumentParser(prog="python -m bench analysis", description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--photos", type=int, default=256, help="MobileNetV2 photo crops (default 256)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--save", action="store_true", help="write bench/results/analysis.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.quick:
        args.reps, args.photos = 1, 32
    print(f"CPU: {cpu_model()}; torch {torch.__version__}, {args.threads} threads", flush=True)
    rows = []
    fashion = load("convscope:fashion-cnn")
    from convscope.data import resolve

    test = resolve("fashion-mnist")
    limit = 2000 if args.quick else None
    for layers in (["conv1", "conv2"], "all"):
        rows.append(throughput("convscope:fashion-cnn", fashion, test, layers, batch_size=256, limit=limit,
                               reps=args.reps))
        print(json.dumps(rows[-1]), flush=True)
    mobile = load("torchvision:mobilenet_v2@IMAGENET1K_V1")
    crops = photo_crops(args.photos)
    for layers in (["features.4", "features.7", "features.10", "features.14"], "all"):
        rows.append(throughput("torchvision:mobilenet_v2@IMAGENET1K_V1", mobile, crops, layers, batch_size=32,
                               limit=None, reps=args.reps, bf16=layers != "all"))
        print(json.dumps(rows[-1]), flush=True)
    mem = {split: memory(split, args.threads) for split in ("test", "train")}
    small, large = mem["test"], mem["train"]
    mem["peak_ratio_60k_10k"] = round(large["peak_mb"] / small["peak_mb"], 3)
    mem["scan_growth_ratio_60k_10k"] = round((large["peak_mb"] - large["baseline_mb"])
                                             / max(1e-9, small["peak_mb"] - small["baseline_mb"]), 3)
    print(json.dumps(mem), flush=True)
    payload = {"cpu": cpu_model(), "torch": torch.__version__, "threads": args.threads, "throughput": rows,
               "memory": mem}
    lines = [f"{r['model']} {r['layers'] if isinstance(r['layers'], str) else ','.join(r['layers'])}: "
             f"scan/plain {r['scan_vs_plain']} (range {r['scan_vs_plain_range']})"
             + (f", bf16 scan/plain float32 {r['bf16_scan_vs_plain_float32']}" if "bf16_scan_vs_plain_float32" in r
                else "") for r in rows]
    lines.append(f"memory 60k/10k peak {mem['peak_ratio_60k_10k']} (scan's own growth {mem['scan_growth_ratio_60k_10k']})")
    report("analysis", payload, save=args.save, as_json=args.json, summary="\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
