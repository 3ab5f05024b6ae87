"""Attribution speed and memory: convscope against Captum on the same model and inputs, in one run on one machine.

Model: torchvision resnet18, random weights (seed 0; speed does not depend on the weights), inputs: scikit-image
photos resized to 224x224 and normalized with the ImageNet statistics. Targets: each input's predicted class.

Cases (ours vs Captum, the same settings on both sides):
- saliency, guided backprop, Grad-CAM (layer4, upsampled bilinearly to 224): batch 8;
- Integrated Gradients: 50 Gauss-Legendre steps, zero baseline, batch 2, 50 path points per pass on both sides;
  `ig/1-image`: issue 9's setting, one image, 50 Gauss-Legendre steps in chunks of 25 (run it with --threads 1 and 2);
- occlusion: one image, 16x16 window, stride 8 (27 x 27 = 729 occluded images), baseline 0, the logit; Captum with
  its default `perturbations_per_eval=1` and with 32 (our batch size); ours with the incremental engine, and ours
  without it (`incremental=False`: the same batches through the unchanged model), and our engine computing every
  step on whole maps (no incremental inference, but BatchNorm folded into the convolutions and channels-last
  memory) to show where the speed comes from; `occlusion/bf16`: ours with `precision="bf16"` against Captum batched.

bf16 deviation (`--cases bf16`, or part of every full run): our occlusion map in bf16 against our float32 map on
resnet18 (random weights, the photo above) and MobileNetV2 (ImageNet weights, scikit-image's chelsea): max |diff|,
max |diff| / max |map|, Spearman rank correlation of the maps and of the window grids, and bf16 / float32 time.
Method: `torch.set_num_threads(--threads)` (default 1: on a shared machine two threads spend much of their time
waiting for each other) for both tools; one warm-up call each, then `--repeats` calls interleaved ours/Captum so load
changes hit both alike; the median of wall-clock and of CPU time (`time.process_time`, which other processes' load
does not inflate) is reported, with ratios ours / Captum. Outputs are compared (max abs difference, and relative to
the largest |value|) on the first timed call.

Memory: each case runs once more in a fresh subprocess; we report how much the process's peak resident memory grows
during that one call (`VmHWM` reset through `/proc/self/clear_refs` after loading the model and inputs and
`malloc_trim`, so memory freed during setup cannot hide a call's peak; falls back to `ru_maxrss` growth). It counts everything the call touches (activations, autograd graph, allocator caches), not
tensors alone. `tracemalloc` cannot see PyTorch's CPU allocations, so it is not used.

    python -m bench.attribution                 # everything, 3 repeats
    python -m bench.attribution --cases occlusion --repeats 2
    python -m bench.attribution --quick         # smoke test: small inputs, one repeat, no memory runs
    python -m bench.attribution --json --save   # machine-readable; write bench/results/attribution.json

Every run prints the CPU model and its bf16 instructions (`lscpu`): ratios from different CPUs do not compare.
Each timed case lists the pairwise ours/Captum ratios of its interleaved repeats, so the spread is visible.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from ._cpu import cpu_info, describe
from ._report import report

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
PHOTOS = ("chelsea", "coffee", "astronaut", "rocket", "immunohistochemistry", "camera", "hubble_deep_field", "retina")


def setting(quick: bool) -> dict:
    return {"size": 64 if quick else 224, "batch": 2 if quick else 8, "ig_batch": 1 if quick else 2,
            "ig_steps": 8 if quick else 50, "ig_chunk": 4 if quick else 25, "window": 8 if quick else 16,
            "stride": 4 if quick else 8, "occlusion_batch": 32}


def model_and_inputs(size: int, batch: int) -> tuple[torch.nn.Module, torch.Tensor]:
    import numpy as np
    import torchvision
    from skimage import data, transform

    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()
    images = []
    for name in (PHOTOS * 2)[:batch]:
        img = np.asarray(getattr(data, name)(), dtype=np.float64)
        img = img / 255.0 if img.max() > 1 else img
        if img.ndim == 2:
            img = np.stack([img] * 3, -1)
        img = transform.resize(img[..., :3], (size, size), anti_aliasing=True)
        images.append(torch.from_numpy(img).permute(2, 0, 1).float())
    x = torch.stack(images)
    x = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    return model, x


def _ours(name: str) -> Callable | None:
    try:
        import convscope.attribution as A
    except ImportError:  # pragma: no cover
        return None
    if name == "occlusion" and not hasattr(A, "occlusion"):
        from convscope.attribution.occlusion import occlusion

        return occlusion
    return getattr(A, name, None)


def cases(model: torch.nn.Module, x: torch.Tensor, s: dict) -> dict[str, tuple[Callable | None, Callable]]:
    """name -> (ours() -> tensor or None if not available, captum() -> tensor), the same inputs and settings."""
    from captum.attr import (GuidedBackprop, IntegratedGradients, LayerAttribution, LayerGradCam, Occlusion,
                             Saliency)

    with torch.no_grad():
        target = model(x).argmax(1).tolist()
    xb = x[: s["batch"]]
    xi = x[: s["ig_batch"]]
    x1 = x[:1]
    w, st = s["window"], s["stride"]

    def wrap(name: str, call: Callable) -> Callable | None:
        fn = _ours(name)
        return None if fn is None else (lambda: call(fn))

    def captum_gradcam():
        cam = LayerGradCam(model, model.layer4).attribute(xb, target[: len(xb)], relu_attributions=True)
        return LayerAttribution.interpolate(cam, tuple(xb.shape[2:]), "bilinear")

    def captum_occlusion(per_eval: int):
        return lambda: Occlusion(model).attribute(x1, target=target[0], sliding_window_shapes=(3, w, w),
                                                  strides=(3, st, st), baselines=0.0,
                                                  perturbations_per_eval=per_eval)

    occ = dict(window=w, stride=st, baseline=0.0, score="logit", batch_size=s["occlusion_batch"])
    return {
        "saliency": (wrap("saliency", lambda f: f(model, xb, target[: len(xb)]).attributions.abs()),
                     lambda: Saliency(model).attribute(xb, target[: len(xb)], abs=True)),
        "guided": (wrap("guided_backprop", lambda f: f(model, xb, target[: len(xb)]).attributions),
                   lambda: GuidedBackprop(model).attribute(xb, target[: len(xb)])),
        "gradcam": (wrap("gradcam", lambda f: f(model, xb, target[: len(xb)], layer="layer4").attributions),
                    captum_gradcam),
        "ig": (wrap("integrated_gradients",
                    lambda f: f(model, xi, target[: len(xi)], baseline=0.0, steps=s["ig_steps"],
                                internal_batch_size=50).attributions),
               lambda: IntegratedGradients(model).attribute(xi, baselines=0.0, target=target[: len(xi)],
                                                            n_steps=s["ig_steps"], internal_batch_size=50)),
        "ig/1-image": (wrap("integrated_gradients",
                            lambda f: f(model, x1, target[:1], baseline=0.0, steps=s["ig_steps"],
                                        internal_batch_size=s["ig_chunk"]).attributions),
                       lambda: IntegratedGradients(model).attribute(x1, baselines=0.0, target=target[:1],
                                                                    n_steps=s["ig_steps"],
                                                                    internal_batch_size=s["ig_chunk"])),
        "occlusion": (wrap("occlusion", lambda f: f(model, x1, target[0], **occ).attributions),
                      captum_occlusion(1)),
        "occlusion/captum-batched": (wrap("occlusion", lambda f: f(model, x1, target[0], **occ).attributions),
                                     captum_occlusion(s["occlusion_batch"])),
        "occlusion/ours-plain": (wrap("occlusion", lambda f: f(model, x1, target[0], **occ,
                                                               incremental=False).attributions),
                                 captum_occlusion(s["occlusion_batch"])),
        "occlusion/ours-whole-maps": (wrap("occlusion", lambda f: _whole_maps(f, model, x1, target[0], occ)),
                                      captum_occlusion(s["occlusion_batch"])),
        "occlusion/bf16": (wrap("occlusion", lambda f: f(model, x1, target[0], **occ, precision="bf16").attributions),
                           captum_occlusion(s["occlusion_batch"])),
    }


def _whole_maps(occlusion: Callable, model: torch.nn.Module, x: torch.Tensor, target: int, options: dict):
    """Our engine with incremental inference switched off (every step on whole maps, BatchNorm folded,
    channels-last): what the engine's kernels alone gain over the plain path."""
    import importlib

    module = importlib.import_module("convscope.attribution.occlusion")  # the module, not the function
    saved, module.FULL_AT = module.FULL_AT, 0.0
    try:
        return occlusion(model, x, target, **options).attributions
    finally:
        module.FULL_AT = saved


# Targets from the brief: gradient methods no slower than Captum; occlusion at least 3x faster at equal output.
LIMITS = {"saliency": 1.05, "guided": 1.05, "gradcam": 1.05, "ig": 1.05, "ig/1-image": 1.0, "occlusion": 1 / 3,
          "occlusion/captum-batched": 1 / 3}
OCCLUSION_TOL = 1e-4


def _timed(fn: Callable) -> tuple[float, float, torch.Tensor]:
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, out


def measure(name: str, ours: Callable | None, captum: Callable, repeats: int) -> dict:
    row: dict = {"case": name}
    if ours is None:
        row["status"] = "not available"
        return row
    ours(), captum()  # warm-up
    times: dict[str, list[tuple[float, float]]] = {"ours": [], "captum": []}
    outputs = {}
    for _ in range(repeats):
        for side, fn in (("ours", ours), ("captum", captum)):
            wall, cpu, out = _timed(fn)
            times[side].append((wall, cpu))
            outputs.setdefault(side, out.detach())
    for side in times:
        row[f"{side}_wall_s"] = statistics.median(t[0] for t in times[side])
        row[f"{side}_cpu_s"] = statistics.median(t[1] for t in times[side])
    for k, clock in enumerate(("wall", "cpu")):  # each repeat's ours/Captum, neighbours in time: the spread
        row[f"pairwise_{clock}"] = [o[k] / c[k] for o, c in zip(times["ours"], times["captum"])]
    row["ratio_wall"] = row["ours_wall_s"] / row["captum_wall_s"]
    row["ratio_cpu"] = row["ours_cpu_s"] / row["captum_cpu_s"]
    diff = (outputs["ours"] - outputs["captum"]).abs().max().item()
    row["max_abs_diff"] = diff
    row["rel_diff"] = diff / max(outputs["captum"].abs().max().item(), 1e-30)
    limit = LIMITS.get(name)
    if limit is not None:
        row["limit"] = limit
        equal = diff <= OCCLUSION_TOL if name.startswith("occlusion") else row["rel_diff"] < 1e-4
        row["met"] = bool(row["ratio_cpu"] <= limit and equal)
    row["status"] = "ok"
    return row


def _mobilenet_and_photo(size: int) -> tuple[torch.nn.Module, torch.Tensor] | None:
    """ImageNet MobileNetV2 (torchvision's weights, offline from the hub cache) and chelsea, or None without them."""
    import numpy as np
    import torchvision
    from skimage import data, transform

    try:
        model = torchvision.models.mobilenet_v2(weights="IMAGENET1K_V1").eval()
    except Exception:  # noqa: BLE001 - no weights here: the row says so
        return None
    img = transform.resize(np.asarray(data.chelsea(), dtype=np.float64) / 255.0, (size, size), anti_aliasing=True)
    x = torch.from_numpy(img).permute(2, 0, 1).float().unsqueeze(0)
    return model, (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def bf16_deviation(s: dict, repeats: int) -> list[dict]:
    """Our occlusion map in bf16 against float32 (and float32 against Captum) on resnet18 and MobileNetV2."""
    from captum.attr import Occlusion
    from scipy.stats import spearmanr

    from convscope.attribution import occlusion

    resnet, x = model_and_inputs(s["size"], 1)
    subjects = [("resnet18 (random weights), " + PHOTOS[0], resnet, x)]
    found = _mobilenet_and_photo(s["size"])
    subjects += [("mobilenet_v2 (ImageNet weights), chelsea", *found)] if found else []
    w, st = s["window"], s["stride"]
    rows = []
    for name, model, image in subjects:
        with torch.no_grad():
            target = int(model(image).argmax())
        options = dict(window=w, stride=st, baseline=0.0, batch_size=s["occlusion_batch"])
        results = {p: occlusion(model, image, target, precision=p, **options) for p in ("float32", "bf16")}  # warm
        times: dict[str, list[float]] = {"float32": [], "bf16": []}
        for _ in range(repeats):
            for precision in times:
                start = time.process_time()
                occlusion(model, image, target, precision=precision, **options)
                times[precision].append(time.process_time() - start)
        exact, low = results["float32"], results["bf16"]
        captum = Occlusion(model).attribute(image, target=target, sliding_window_shapes=(3, w, w),
                                            strides=(3, st, st), baselines=0.0,
                                            perturbations_per_eval=s["occlusion_batch"])
        scale = float(exact.map.abs().max())
        diff = float((exact.map - low.map).abs().max())
        exact_grid, low_grid = exact.extras["grid"].flatten(), low.extras["grid"].flatten()
        captum_diff = float((exact.attributions - captum).abs().max())
        rows.append({
            "model": name, "target": target, "map_max": scale,
            "bf16_max_abs_diff": diff, "bf16_rel_diff": diff / scale,
            "bf16_spearman_map": float(spearmanr(exact.map.flatten(), low.map.flatten()).statistic),
            "bf16_spearman_grid": float(spearmanr(exact_grid, low_grid).statistic),
            "bf16_same_top_window": bool(exact_grid.argmax() == low_grid.argmax()),
            "float32_vs_captum_max_abs_diff": captum_diff,
            "float32_vs_captum_rel_diff": captum_diff / float(captum.abs().max()),
            "bf16_over_float32_cpu": statistics.median(times["bf16"]) / statistics.median(times["float32"]),
            "pairwise_cpu": [b / f for b, f in zip(times["bf16"], times["float32"])]})
    return rows


def _rss_kb(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(field)


def peak_growth_mb(fn: Callable) -> tuple[float, str]:
    """Peak resident memory growth (MB) during `fn()` in this process, and how it was measured."""
    try:
        before = _rss_kb("VmRSS")
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")  # reset VmHWM (the peak) to the current RSS
        fn()
        return (_rss_kb("VmHWM") - before) / 1024, "VmHWM"
    except OSError:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        fn()
        return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024, "ru_maxrss"


def child(case: str, side: str, quick: bool, threads: int) -> None:
    torch.set_num_threads(threads)
    s = setting(quick)
    model, x = model_and_inputs(s["size"], s["batch"])
    ours, captum = cases(model, x, s)[case]
    fn = ours if side == "ours" else captum
    try:  # hand memory freed during setup back to the OS, so a call cannot hide its peak in it
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    mb, how = peak_growth_mb(fn) if fn is not None else (float("nan"), "n/a")
    print(json.dumps({"peak_mb": mb, "how": how}))


def memory(case: str, side: str, quick: bool, threads: int) -> float | None:
    command = [sys.executable, "-m", "bench.attribution", "--child", case, side, "--threads", str(threads)]
    if quick:
        command.append("--quick")
    done = subprocess.run(command, capture_output=True, text=True, cwd=Path(__file__).parent.parent,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    try:
        return json.loads(done.stdout.strip().splitlines()[-1])["peak_mb"]
    except (IndexError, ValueError, KeyError):
        return None


def _spread(values: list[float]) -> str:
    return f"{min(values):.2f}-{max(values):.2f}" if values else "-"


def _deviation_table(rows: list[dict]) -> str:
    head = (f"{'occlusion, bf16 vs float32':44s} {'max|diff|':>10s} {'/max|map|':>9s} {'rho map':>8s} "
            f"{'rho grid':>8s} {'top win':>7s} {'time':>6s} {'spread':>10s}  {'f32 vs Captum':>13s}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['model'][:44]:44s} {r['bf16_max_abs_diff']:10.2e} {r['bf16_rel_diff']:9.2e} "
                     f"{r['bf16_spearman_map']:8.4f} {r['bf16_spearman_grid']:8.4f} "
                     f"{'same' if r['bf16_same_top_window'] else 'moved':>7s} {r['bf16_over_float32_cpu']:6.2f} "
                     f"{_spread(r['pairwise_cpu']):>10s}  {r['float32_vs_captum_max_abs_diff']:8.1e} "
                     f"({r['float32_vs_captum_rel_diff']:.0e})")
    return "\n".join(lines)


def _table(rows: list[dict]) -> str:
    head = (f"{'case':26s} {'ours s':>8s} {'captum s':>9s} {'ratio(cpu)':>10s} {'ratio(wall)':>11s} "
            f"{'max|diff|':>10s} {'rel diff':>9s} {'ours MB':>8s} {'captum MB':>9s} {'spread(cpu)':>11s}  target")
    lines = [head, "-" * len(head)]
    for r in rows:
        if r.get("status") != "ok":
            lines.append(f"{r['case']:26s} {r.get('status')}")
            continue
        mem = [f"{r[k]:8.0f}" if isinstance(r.get(k), (int, float)) else f"{'-':>8s}"
               for k in ("ours_peak_mb", "captum_peak_mb")]
        goal = ""
        if "limit" in r:
            goal = f"<= {r['limit']:.3g} {'met' if r['met'] else 'NOT met'}"
        lines.append(f"{r['case']:26s} {r['ours_cpu_s']:8.2f} {r['captum_cpu_s']:9.2f} {r['ratio_cpu']:10.3f} "
                     f"{r['ratio_wall']:11.3f} {r['max_abs_diff']:10.2e} {r['rel_diff']:9.2e} {mem[0]} "
                     f"{mem[1]:>9s} {_spread(r.get('pairwise_cpu', [])):>11s}  {goal}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.attribution", description=__doc__.split("\n")[0])
    parser.add_argument("--cases", default=None, help="comma-separated subset of: saliency, guided, gradcam, ig, "
                                                        "ig/1-image, occlusion, occlusion/captum-batched, "
                                                        "occlusion/ours-plain, occlusion/ours-whole-maps, "
                                                        "occlusion/bf16, bf16 (the deviation table)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per tool; the median is reported")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads for both tools")
    parser.add_argument("--quick", action="store_true", help="small inputs, 1 repeat, no memory runs")
    parser.add_argument("--no-memory", action="store_true", help="skip the per-case memory subprocesses")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument("--save", action="store_true", help="also write bench/results/attribution.json")
    parser.add_argument("--child", nargs=2, metavar=("CASE", "SIDE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child[0], args.child[1], args.quick, args.threads)
        return 0
    import warnings

    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    s = setting(args.quick)
    model, x = model_and_inputs(s["size"], s["batch"])
    all_cases = cases(model, x, s)
    names = args.cases.split(",") if args.cases else [*all_cases, "bf16"]
    unknown = [n for n in names if n not in all_cases and n != "bf16"]
    if unknown:
        parser.error(f"unknown case(s) {unknown}; choose from {[*all_cases, 'bf16']}")
    repeats = 1 if args.quick else args.repeats
    load_start = os.getloadavg()
    cpu = cpu_info()
    if not args.json:
        print(describe(cpu), f"| {args.threads} thread(s); torch {torch.__version__}; load average "
              f"{' '.join(f'{v:.2f}' for v in load_start)}", flush=True)
    rows, deviation = [], []
    if "bf16" in names:
        names.remove("bf16")
        deviation = bf16_deviation(s, repeats)
        if not args.json:
            print(_deviation_table(deviation), flush=True)
    for name in names:
        ours, captum = all_cases[name]
        row = measure(name, ours, captum, repeats)
        if row["status"] == "ok" and not (args.quick or args.no_memory):
            row["ours_peak_mb"] = memory(name, "ours", args.quick, args.threads)
            row["captum_peak_mb"] = memory(name, "captum", args.quick, args.threads)
        rows.append(row)
        if not args.json:
            print(_table([row]).splitlines()[-1] if len(rows) > 1 else _table([row]), flush=True)
    payload = {"benchmark": "attribution", "model": "torchvision resnet18 (random weights)", "setting": s,
               "threads": args.threads, "repeats": repeats, "torch": torch.__version__,
               "python": platform.python_version(), "cpus": os.cpu_count(), "cpu": cpu,
               "load_average": {"start": load_start, "end": os.getloadavg()},
               "memory": "peak RSS growth during one call in a fresh process (VmHWM after a reset), MB",
               "ratios": "ours / Captum: median CPU time (process_time) and wall time; pairwise_*: each repeat's",
               "rows": rows, "bf16_deviation": deviation}
    report("attribution" if args.threads == 1 else f"attribution-{args.threads}threads", payload, save=args.save,
           as_json=args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
