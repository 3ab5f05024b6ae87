"""Occlusion sensitivity (Zeiler & Fergus 2014): how much the target drops when a patch of the image is hidden.

A window slides over the image (top-left corners at multiples of `stride`; the last one in each direction is cut at
the border, like Captum's `Occlusion`); inside it the image is replaced by a baseline. For each position the score
drop `f(x) - f(occluded)` is recorded (`extras["grid"]`, (B, nH, nW)), and each pixel's attribution is the mean drop
over the windows that cover it, the same in every channel: exactly Captum's
`Occlusion.attribute(x, sliding_window_shapes=(C, w, w), strides=(C, s, s), baselines=...)` with `f` the score.

Scores (`score=`): for class targets, the logit ("logit", default: the score every other method explains, and
Captum's `Occlusion(model)`) or the softmax probability ("probability"); a callable target gets the model's raw
output; a unit target (`"LAYER:CH"`, `"LAYER:CH@ROW,COL"` or `unit=`) maps the drop of that unit's activation (its
spatial mean, or the value at that position).

The occluded images are evaluated in batches under `torch.inference_mode` (no graph is kept). With
`incremental=True` (default) the incremental-inference engine (`_incremental`) recomputes only the part of each
feature map an occluder changes; models it cannot trace run the plain batched path, with the same numbers.

`precision="bf16"` (opt-in) runs those evaluations under bfloat16 autocast (`convscope.accel`), the clean image's
too (so that a drop compares two scores of the same arithmetic); a predicted class is found by a float32 forward,
and scores are cast to float32 before they are subtracted. Measured (`bench/attribution.py`, in the README): on
ImageNet MobileNetV2 and a photo, 1.7x faster on a CPU with AVX-512 BF16, the map's rank correlation with the
float32 map 0.995 but its largest deviation 11% of the map's maximum (the top window can move); on a network with
small drops (random weights) 26%. Fine for looking, not for comparing with another implementation.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..accel import Precision, Resolved, check_precision, choose_precision, network_precision, probe, resolve_precision
from ..errors import InputShapeError, OptionError, TargetError
from ..hooks import capture, frozen
from ..layers import Unit, parse_unit
from ..models import ModelSpec
from ._core import Attribution, Target, as_spec, check_inputs, make_attribution, resolve_target, unit_score
from ._incremental import IncrementalEngine

__all__ = ["occlusion", "window_grid"]

Baseline = float | Literal["mean", "blur"] | torch.Tensor

# The engine computes a step on whole maps once its patch would cover this fraction of the map (Krypton's
# projective-field threshold); 0 makes it compute every step on whole maps (used by the benchmark to separate the
# gain of incremental inference from that of the engine's folded, channels-last convolutions).
FULL_AT = 0.8


def _pair(value: int | tuple[int, int], name: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) and v >= 1 for v in pair):
        raise OptionError(f"{name} must be a positive int or a pair of them, got {value!r}")
    return pair  # type: ignore[return-value]


def window_grid(size: tuple[int, int], window: tuple[int, int], stride: tuple[int, int]) -> tuple[np.ndarray, int, int]:
    """The occluded rectangles of an image of `size` (H, W): (M, 4) rows r0, r1, c0, c1 in row-major order of the
    (nH, nW) grid of positions. Corners at k * stride for k < ceil((H - w) / s) + 1; the last ones are cut at the
    border."""
    starts = []
    for dim in (0, 1):
        count = math.ceil((size[dim] - window[dim]) / stride[dim]) + 1
        lo = np.arange(count) * stride[dim]
        starts.append((lo, np.minimum(lo + window[dim], size[dim])))
    (r0, r1), (c0, c1) = starts
    rows = np.repeat(np.stack([r0, r1], 1), len(c0), 0)
    cols = np.tile(np.stack([c0, c1], 1), (len(r0), 1))
    return np.concatenate([rows, cols], 1).astype(np.int64), len(r0), len(c0)


def _baselines(x: torch.Tensor, baseline: Baseline, window: tuple[int, int]) -> torch.Tensor:
    """(B, C, H, W) values shown inside the window for each input."""
    if isinstance(baseline, bool) or not isinstance(baseline, (int, float, str, torch.Tensor)):
        raise OptionError(f"baseline must be a number, 'mean', 'blur' or a tensor, got {type(baseline).__name__}")
    if isinstance(baseline, (int, float)):
        return torch.full_like(x, float(baseline))
    if baseline == "mean":
        return x.mean((2, 3), keepdim=True).expand_as(x)
    if baseline == "blur":
        return _blur(x, sigma=max(window) / 2)
    if isinstance(baseline, str):
        raise OptionError(f"baseline {baseline!r} is not one of 'mean', 'blur' (or give a number or a tensor)")
    value = baseline.detach().to(x.device, x.dtype)
    try:
        return torch.broadcast_to(value, x.shape)
    except RuntimeError:
        raise InputShapeError(f"baseline of shape {tuple(value.shape)} does not broadcast to the inputs "
                              f"{tuple(x.shape)}") from None


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (B, C, H, W), edges replicated."""
    radius = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-0.5 * (t / sigma) ** 2)
    kernel = kernel / kernel.sum()
    c = x.shape[1]
    out = F.pad(x, (radius, radius, radius, radius), mode="replicate")
    out = F.conv2d(out, kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(out, kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def _occluded(image: torch.Tensor, baseline: torch.Tensor, windows: np.ndarray) -> torch.Tensor:
    """(N, C, H, W): `image` (1, C, H, W) with `baseline` inside each window (N, 4)."""
    h, w = image.shape[-2:]
    win = torch.as_tensor(windows, device=image.device)
    rows = torch.arange(h, device=image.device)
    cols = torch.arange(w, device=image.device)
    in_rows = (rows >= win[:, :1]) & (rows < win[:, 1:2])
    in_cols = (cols >= win[:, 2:3]) & (cols < win[:, 3:4])
    mask = (in_rows[:, :, None] & in_cols[:, None, :]).unsqueeze(1)
    return torch.where(mask, baseline, image)


def _plain(model: nn.Module, image: torch.Tensor, baseline: torch.Tensor, windows: np.ndarray, batch_size: int,
           layer: str | None):
    """The plain path: each batch of occluded images through the whole model (or up to `layer`)."""
    for start in range(0, len(windows), batch_size):
        yield _forward(model, _occluded(image, baseline, windows[start:start + batch_size]), layer)


def _forward(model: nn.Module, batch: torch.Tensor, layer: str | None) -> torch.Tensor:
    """The model's output on `batch`, or the activation of `layer` (the pass stops there)."""
    if layer is None:
        return model(batch)
    with capture(model, layer, stop=True) as cap:
        cap.run(batch)
        return cap[layer]


def _precision(precision: Precision, module: nn.Module, image: torch.Tensor, base: torch.Tensor,
               windows: np.ndarray, batch_size: int, layer: str | None) -> Resolved:
    """What the occluded forwards run in: "float32" / "bf16" as asked; "auto" as `accel.choose_precision` decides
    (the device's check, then one batch of occluded `image` (1, C, H, W) through the plain path of `module`, the
    working copy, timed in both precisions where the pass is big enough; cached per working copy and batch)."""
    if precision != "auto":
        return resolve_precision(precision, image.device, image.dtype)
    batch = _occluded(image, base, windows[:batch_size])

    def trial(choice: Resolved) -> None:
        with network_precision(choice, image.device):
            _forward(module, batch, layer)

    seen = probe(module, image, [layer] if layer is not None else [], stop=layer is not None)
    return choose_precision("auto", module, trial, ("occlusion", tuple(batch.shape), layer), image.device,
                            image.dtype, work=seen.macs(module) * batch.shape[0])


def _wide(value: torch.Tensor) -> torch.Tensor:
    """bf16 / fp16 values (from autocast) as float32, so drops are differences of float32 scores."""
    return value.float() if value.dtype in (torch.bfloat16, torch.float16) else value


def _scorer(spec: ModelSpec, target, score: str):
    """fn(value (N, ...), image index) -> (N,) scores, from the model output or the unit layer's activation."""
    if target.unit is not None:
        return lambda value, _b: unit_score(_wide(value), target.unit)
    if target.classes is not None:
        classes = target.classes

        def class_score(output: torch.Tensor, b: int) -> torch.Tensor:
            if output.ndim != 2:
                raise TargetError(f"a class target needs an output (B, classes); model {spec.name!r} gives "
                                  f"{tuple(output.shape[1:])} per input")
            index = int(classes[b])
            if not 0 <= index < output.shape[1]:
                raise TargetError(f"class {index} is out of range; model {spec.name!r} has classes "
                                  f"0..{output.shape[1] - 1}")
            values = _wide(output).softmax(1) if score == "probability" else _wide(output)
            return values[:, index]

        return class_score
    return lambda output, _b: target.score(_wide(output), None)


def occlusion(
    model: ModelSpec | nn.Module | str,
    inputs: torch.Tensor,
    target: Target = None,
    *,
    window: int | tuple[int, int] = 16,
    stride: int | tuple[int, int] = 8,
    baseline: Baseline = 0.0,
    batch_size: int = 32,
    score: Literal["logit", "probability"] = "logit",
    unit: str | Unit | None = None,
    incremental: bool = True,
    precision: Precision = "float32",
) -> Attribution:
    """Occlusion sensitivity of `inputs` (B, C, H, W) for `target`.

    Args:
        model: a `ModelSpec`, `nn.Module` or model string.
        inputs: normalized model inputs (B, C, H, W) (or one (C, H, W)).
        target: class index / name / list, `None` (predicted class), a callable on the output, or a unit
            `"LAYER:CH"` / `"LAYER:CH@ROW,COL"` (the drop of that unit's activation).
        window: occluder size in pixels, int or (h, w); must fit in the image.
        stride: step between window positions, int or (h, w).
        baseline: what the occluder shows: a number (0.0 = the normalized mean, "grey"), "mean" (each image's
            per-channel mean), "blur" (the image blurred with sigma = window / 2), or a tensor broadcastable to
            the inputs.
        batch_size: occluded images evaluated per forward pass.
        score: for class targets, "logit" (the pre-softmax score, as every other method and Captum) or
            "probability" (softmax; a non-top class's probability map is mostly noise).
        unit: a unit to explain instead of a target (same as `target="LAYER:CH"`).
        incremental: recompute only what each occluder changes (same numbers up to float rounding).
        precision: "float32" (default), "bf16" (the occluded forwards under bfloat16 autocast: faster on CPUs with
            bf16 matrix units and on GPUs; deviations up to ~10% of the map's maximum, see above) or "auto" (bf16
            where the device and a timed batch of occluded images through this network find it faster, as
            everywhere in convscope; float32 inside `accel.plain()`). The recipe records what ran.

    Returns:
        `Attribution` with `attributions` (B, C, H, W) the mean drop over the windows covering each pixel (0 where
        no window covers it), `map` (B, H, W) the same map, `scores` (B,) the clean scores, and
        `extras["grid"]` (B, nH, nW) the drop at each window position (row-major corners k * stride).
    """
    spec = as_spec(model)
    x = check_inputs(spec, inputs)
    size = tuple(x.shape[-2:])
    window, stride = _pair(window, "window"), _pair(stride, "stride")
    if window[0] > size[0] or window[1] > size[1]:
        raise InputShapeError(f"window {window} does not fit in inputs of size {size}")
    if score not in ("logit", "probability"):
        raise OptionError(f"score must be 'logit' or 'probability', got {score!r}")
    check_precision(precision)
    if precision == "bf16" and x.dtype != torch.float32:
        raise OptionError(f"precision 'bf16' needs a float32 model; model {spec.name!r} runs in {x.dtype}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise OptionError(f"batch_size must be a positive int, got {batch_size!r}")
    if unit is not None:
        if target is not None:
            raise TargetError("give either target or unit, not both")
        target = parse_unit(unit)
    windows, n_rows, n_cols = window_grid(size, window, stride)  # type: ignore[arg-type]
    with frozen(spec.module) as module, torch.inference_mode():
        resolved = resolve_target(spec, target, x)
        scorer = _scorer(spec, resolved, score)
        layer = str(resolved.unit.layer) if resolved.unit is not None else None
        bases = _baselines(x, baseline, window)
        ran = _precision(precision, module, x[:1], bases[:1], windows, batch_size, layer)
        engine = IncrementalEngine.build(module, x[:1], layer, full_at=FULL_AT) if incremental else None
        clean_scores, drops = [], []
        for b in range(x.shape[0]):
            image, base = x[b:b + 1], bases[b:b + 1]
            with network_precision(ran, x.device):  # the engine is built (and checked) in float32, above
                if engine is not None:
                    env = engine.clean(image)
                    clean = scorer(env[engine.target], b)
                    values = engine.run(image, base, windows, window, batch_size, env=env)
                else:
                    clean = scorer(_forward(module, image, layer), b)
                    values = _plain(module, image, base, windows, batch_size, layer)
                drops.append(torch.cat([clean - scorer(v, b) for v in values]))
            clean_scores.append(clean)
        grid = torch.stack(drops).view(x.shape[0], n_rows, n_cols)
        attributions = _spread(grid, windows, n_rows, n_cols, size).unsqueeze(1).expand_as(x)
    # copies made outside inference mode are ordinary tensors, usable later in autograd code
    grid, attributions, scores = grid.clone(), attributions.clone(), torch.cat(clean_scores).clone()
    classes = None if resolved.classes is None else resolved.classes.clone()
    params = {"window": list(window), "stride": list(stride), "score": score,
              "baseline": baseline if isinstance(baseline, (int, float, str)) else "tensor",
              "engine": "incremental" if engine is not None else "plain", "precision": ran,
              "precision_asked": precision}
    return make_attribution(spec, "occlusion", attributions=attributions, map=attributions[:, 0], inputs=x,
                            scores=scores, classes=classes, target=target, params=params,
                            extras={"grid": grid})


def _spread(grid: torch.Tensor, windows: np.ndarray, n_rows: int, n_cols: int, size: tuple[int, int]) -> torch.Tensor:
    """(B, nH, nW) drops -> (B, H, W): each pixel's mean over the windows covering it (0 where none does)."""
    rows = windows[::n_cols, :2]
    cols = windows[:n_cols, 2:]
    cover_r = torch.zeros(n_rows, size[0], dtype=grid.dtype, device=grid.device)
    cover_c = torch.zeros(n_cols, size[1], dtype=grid.dtype, device=grid.device)
    for i, (lo, hi) in enumerate(rows):
        cover_r[i, lo:hi] = 1
    for j, (lo, hi) in enumerate(cols):
        cover_c[j, lo:hi] = 1
    total = torch.einsum("bij,ih,jw->bhw", grid, cover_r, cover_c)
    count = torch.outer(cover_r.sum(0), cover_c.sum(0))
    return torch.where(count > 0, total / count.clamp(min=1), torch.zeros_like(total))
