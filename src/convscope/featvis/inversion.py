"""Feature inversion (Mahendran & Vedaldi 2015): which images does a layer's code describe?

Starting from seeded noise, gradient descent looks for pixels `x` whose code `phi(x)` at `layer` matches the code
`phi(x0)` of a photo, under a natural-image prior:

    loss(x) = ||phi(x) - phi(x0)||^2 / ||phi(x0)||^2  +  tv * TV_beta(x) / V^beta  +  alpha_weight * R_alpha(x)

- The data term is normalized by the code's energy, as in the paper, so one `tv` weight works across layers.
- `TV_beta` is the total variation with exponent `beta` (2 by default: beta < 1 gives spikes, beta ~ 2 smooth
  images; `regularizers.TotalVariation`), averaged over channels and pixels; `V = 0.05` is the typical RMS step
  between neighbouring pixels of a natural photo in [0, 1] units, so a photo scores about 1 and `tv` weighs the
  prior against a relative code error of 100 %.
- The paper's alpha-norm bound on the image becomes a hard box: pixels stay in [0, 1] (projected after each step);
  `R_alpha` = mean |2x - 1|^alpha (alpha = 6) additionally keeps them off the box edges when `alpha_weight > 0`.
- `jitter` rolls the image by up to that many pixels per step (seeded), which helps for deep layers.

The network (a frozen working copy, `hooks.frozen`; the user's model is not touched) runs only up to `layer`
(`hooks.capture(..., stop=True)`), in `precision` (bf16 autocast where "auto" finds it faster); the image, the loss
and Adam's state stay float32, and the reported code errors come from float32 passes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..accel import Precision, Resolved, check_precision, choose_precision, network_precision
from ..errors import BadImageError, InputShapeError, NonFiniteError, OptionError
from ..hooks import capture, frozen
from ..layers import LayerLike, resolve
from ..models import ModelSpec, load
from ..results import Recipe, ResultMixin
from .regularizers import TotalVariation

__all__ = ["Inversion", "invert", "as_pixels", "check_option"]

ImageLike = str | Path | Image.Image | np.ndarray | torch.Tensor

TV_SCALE = 0.05  # V: typical RMS step between neighbouring pixels of a photo, per channel, [0, 1] units


def check_option(name: str, value: float, *, low: float | None = None, high: float | None = None,
                 strict: bool = False) -> None:
    """Raise `OptionError` unless `low <= value <= high` (`low < value` with `strict`)."""
    if value != value or (low is not None and (value <= low if strict else value < low)) or (
        high is not None and value > high
    ):
        bound = f"{'>' if strict else '>='} {low}" if low is not None else ""
        if high is not None:
            bound += (" and " if bound else "") + f"<= {high}"
        raise OptionError(f"{name}={value!r} is out of range; it must be {bound}")


def as_pixels(spec: ModelSpec, image: ImageLike) -> torch.Tensor:
    """An image for `spec` -> (B, C, H, W) pixels in [0, 1] on the model's device and dtype.

    A path, PIL image or array is read, converted to the model's channel count, resized and centre-cropped to its
    input size (`spec.to_pixels`). A tensor (C, H, W) or (B, C, H, W) is taken as [0, 1] pixels as it is (no
    resize); it must have the model's channel count.
    """
    if isinstance(image, torch.Tensor):
        pixels = spec.batch(image, "image tensor")
        lo, hi = float(pixels.min()), float(pixels.max())
        if lo < -1e-3 or hi > 1 + 1e-3:
            raise BadImageError(f"image tensor values span [{lo:.3g}, {hi:.3g}]; give pixels in [0, 1] "
                                "(spec.to_pixels(image), not spec.preprocess(image))")
        return pixels.clamp(0, 1)
    return spec.to_pixels(image).to(spec.device, spec.dtype)


def total_variation(pixels: torch.Tensor, beta: float = 2.0) -> torch.Tensor:
    """Normalized TV^beta of (B, C, H, W) pixels -> (B,): `regularizers.TotalVariation`'s mean of
    (dx^2 + dy^2)^(beta / 2) over channels and positions, divided by `V**beta` so a natural photo scores about 1."""
    return TotalVariation(1.0, beta).cost(pixels, None) / TV_SCALE**beta


def _code(cap: Any, layer: str, pixels: torch.Tensor, spec: ModelSpec, precision: Resolved = "float32"
          ) -> torch.Tensor:
    """The code (B, ...) of `pixels` at `layer`, in the model's dtype whatever `precision` it ran in."""
    with network_precision(precision, pixels.device):
        cap.run(spec.normalize(pixels))
        code = cap[layer]
    return code.to(pixels.dtype)


@dataclass(frozen=True)
class Inversion(ResultMixin):
    """What `invert` found.

    Attributes:
        reconstruction: (1, C, H, W) pixels in [0, 1] whose code matches the original's.
        original: (1, C, H, W) pixels of the image that was inverted.
        code_error: ||phi(x*) - phi(x0)|| / ||phi(x0)|| reached (no jitter).
        initial_code_error: the same for the random starting image.
        trace: (steps,) the loss (data term + priors) at each step.
        code_errors: (steps,) the relative code error at each step (of the jittered image when jitter > 0).
        recipe: model, layer, every option, seed, versions.
    """

    reconstruction: torch.Tensor
    original: torch.Tensor
    code_error: float
    initial_code_error: float
    trace: torch.Tensor
    code_errors: torch.Tensor
    recipe: Recipe

    def to_image(self, *, cell: int = 224):
        """Original | reconstruction, side by side, labelled."""
        from ..render.core import grid, to_pil

        layer = self.recipe.params["layer"]
        tiles = [to_pil(self.original[0]), to_pil(self.reconstruction[0])]
        labels = ["original", f"from {layer}: code error {self.code_error:.1%}"]
        return grid(tiles, columns=2, labels=labels, cell=max(cell, *self.original.shape[-2:]))


def invert(
    model: ModelSpec | nn.Module | str,
    image: ImageLike,
    layer: LayerLike,
    *,
    steps: int = 200,
    tv: float = 0.1,
    beta: float = 2.0,
    alpha: float = 6.0,
    alpha_weight: float = 0.0,
    lr: float = 0.05,
    jitter: int = 0,
    seed: int = 0,
    precision: Precision = "auto",
    progress: Callable[[int, int], None] | None = None,
) -> Inversion:
    """Reconstruct an image from its code at `layer`, from seeded noise, under a TV^beta prior.

    Args:
        model: a `ModelSpec`, `nn.Module` or model string (`convscope.models.load`).
        image: path, PIL image, array, or [0, 1] pixel tensor (C, H, W) / (1, C, H, W); see `as_pixels`.
        layer: `named_modules()` path whose output is the code (`"features.6"`, `"layer1.0.relu#1"`), a module of
            the model or a `Layer` (also as `layer=`).
        steps: Adam steps (learning rate `lr`, cosine-decayed to zero).
        tv: weight of the normalized TV^beta prior (0 disables it).
        beta: TV exponent (2 as in the paper; 1 is classic TV).
        alpha, alpha_weight: the alpha-norm penalty mean |2x - 1|^alpha and its weight (0: box constraint only).
        jitter: roll the image by up to this many pixels each step (0: none).
        seed: seeds the random start and the jitter (a local `torch.Generator`; no global state is touched).
        precision: "auto" (default), "float32" or "bf16": what the network runs in during the optimization (see
            `convscope.accel`); the recipe records what ran.
        progress: called with (steps done, steps) after each step.

    Returns an `Inversion`; `code_error` is the relative code error reached.
    """
    spec = load(model)
    layer = resolve(spec.module, layer).name
    check_precision(precision)  # a bad choice fails before any work
    check_option("steps", steps, low=1)
    check_option("tv", tv, low=0)
    check_option("beta", beta, low=0, strict=True)
    check_option("alpha", alpha, low=1)
    check_option("alpha_weight", alpha_weight, low=0)
    check_option("lr", lr, low=0, strict=True)
    check_option("jitter", jitter, low=0)
    original = as_pixels(spec, image)
    if original.shape[0] != 1:
        raise InputShapeError(f"invert takes one image, got a batch of {original.shape[0]}")
    generator = torch.Generator().manual_seed(seed)
    start = (0.5 + 0.1 * torch.randn(original.shape, generator=generator)).clamp(0, 1)
    x = start.to(original.device, original.dtype).requires_grad_(True)
    optimizer = torch.optim.Adam([x], lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    losses, errors = [], []
    with frozen(spec.module) as net, capture(net, layer, detach=False, stop=True) as cap:
        with torch.no_grad():
            target = _code(cap, layer, original, spec).detach().clone()
            energy = target.pow(2).sum()
            if not energy > 0:
                raise NonFiniteError(f"the code of the image at {layer!r} is all zeros (or not finite): "
                                     "nothing to invert; pick another layer or image")
            initial = float((_code(cap, layer, x, spec) - target).norm() / energy.sqrt())

        def trial(choice: Resolved) -> None:  # one step's network work, for precision="auto" to time
            probe = x.detach().clone().requires_grad_(True)
            torch.autograd.grad((_code(cap, layer, probe, spec, choice) - target).pow(2).sum(), probe)

        ran = choose_precision(precision, net, trial, ("invert", tuple(x.shape), layer), spec.device, spec.dtype)
        for step in range(steps):
            moved = x
            if jitter:
                dy, dx = torch.randint(-jitter, jitter + 1, (2,), generator=generator).tolist()
                moved = torch.roll(x, (dy, dx), dims=(2, 3))
            code = _code(cap, layer, moved, spec, ran)
            data = (code - target).pow(2).sum() / energy
            loss = data + tv * total_variation(x, beta).sum()
            if alpha_weight:
                loss = loss + alpha_weight * (2 * x - 1).abs().pow(alpha).mean()
            if not torch.isfinite(loss):
                raise NonFiniteError(f"the inversion loss became {float(loss)}; lower lr (now {lr})")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            with torch.no_grad():
                x.clamp_(0, 1)
            losses.append(float(loss.detach()))
            errors.append(float(data.detach().sqrt()))
            if progress is not None:
                progress(step + 1, steps)
        with torch.no_grad():
            final = float((_code(cap, layer, x, spec) - target).norm() / energy.sqrt())
    recipe = Recipe(
        kind="inversion",
        model=spec.describe(),
        params={"layer": layer, "steps": steps, "tv": tv, "beta": beta, "alpha": alpha, "alpha_weight": alpha_weight,
                "lr": lr, "jitter": jitter, "seed": seed, "optimizer": "adam+cosine", "init": "0.5+0.1*randn, clamped",
                "image": str(image) if isinstance(image, (str, Path)) else type(image).__name__,
                "tv_scale": TV_SCALE, "code_error": final, "precision": ran},
    )
    return Inversion(
        reconstruction=x.detach().clone(),
        original=original.detach().clone(),
        code_error=final,
        initial_code_error=initial,
        trace=torch.tensor(losses),
        code_errors=torch.tensor(errors),
        recipe=recipe,
    )
