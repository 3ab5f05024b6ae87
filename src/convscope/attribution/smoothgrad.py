"""SmoothGrad (Smilkov et al. 2017): the mean input gradient over noisy copies of the input.

Noise: sample s adds `sigma_b * n_s` to input b, where `n_s` (C, H, W) is standard normal noise drawn in sample order
from a CPU generator seeded with `seed` (same seed, same noise, on any device) and `sigma_b = noise_level *
(max(x_b) - min(x_b))` as in the paper. Every input of a batch sees the same noise pattern `n_s` (scaled by its own
sigma), so an input's result does not depend on what else is in the batch. An explicit `noise` tensor replaces all
of this (e.g. to reproduce another implementation exactly).

As for integrated gradients, the gradients of a network that starts with a convolution of the input are summed at
that convolution's output, and its input backward runs once per input (`_summed`).
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import OptionError
from ..hooks import frozen
from ..models import ModelSpec
from ._core import Attribution, Target, abs_max, as_spec, check_inputs, clean_pass, make_attribution, \
    resolve_target
from ._summed import SummedGradients, linear_input_layer

__all__ = ["smoothgrad"]


def _noise(x: torch.Tensor, samples: int, noise_level: float, seed: int, noise: torch.Tensor | None
           ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(noise, sigma): noise (S, C, H, W) shared by all inputs with sigma (B,), or explicit noise (B, S, C, H, W)
    with sigma None."""
    batch, shape = x.shape[0], tuple(x.shape[1:])
    if noise is not None:
        noise = noise.to(x.device, x.dtype)
        if noise.ndim == 4:
            noise = noise.unsqueeze(0).expand(batch, *noise.shape)
        if noise.ndim != 5 or noise.shape[0] != batch or tuple(noise.shape[2:]) != shape:
            raise OptionError(f"noise must have shape (B, S, C, H, W) = ({batch}, S, {', '.join(map(str, shape))}) "
                              f"or (S, C, H, W); got {tuple(noise.shape)}")
        return noise, None
    if samples < 1:
        raise OptionError(f"samples must be at least 1, got {samples}")
    if not noise_level >= 0:
        raise OptionError(f"noise_level must be >= 0 (a fraction of each input's value range), got {noise_level}")
    generator = torch.Generator().manual_seed(seed)
    draws = torch.stack([torch.randn(shape, generator=generator, dtype=torch.float64) for _ in range(samples)])
    spread = x.flatten(1).amax(1) - x.flatten(1).amin(1)
    return draws.to(x.device, x.dtype), noise_level * spread


def smoothgrad(model: ModelSpec | nn.Module | str, inputs: torch.Tensor, target: Target = None, *,
               samples: int = 25, noise_level: float = 0.15, batch_size: int | None = None, seed: int = 0,
               noise: torch.Tensor | None = None) -> Attribution:
    """SmoothGrad: the mean gradient of the target score over `samples` noisy copies of each input.

    Args:
        model, inputs, target: as for every method; `target=None` explains each clean input's predicted class.
        samples: noisy copies per input (S).
        noise_level: noise standard deviation as a fraction of each input's value range (max - min), 0.1-0.2 in the
            paper.
        batch_size: most noisy inputs per forward/backward pass (None: all B * S at once).
        seed: seeds the noise (a private CPU generator; the global random state is untouched).
        noise: explicit noise in input space, (B, S, C, H, W) or (S, C, H, W) for all inputs; overrides `samples`,
            `noise_level` and `seed`.

    Returns an `Attribution`: `attributions` (B, C, H, W) the mean signed gradient, `map` (B, H, W) its largest
    |value| over channels, `scores` the target score at the clean inputs.
    """
    spec = as_spec(model)
    x = check_inputs(spec, inputs)
    resolved = resolve_target(spec, target, x, predict=False)
    noise, sigma = _noise(x, samples, noise_level, seed, noise)
    samples = noise.shape[1] if sigma is None else noise.shape[0]
    batch = x.shape[0]
    total_count = batch * samples
    step = total_count if batch_size is None else int(batch_size)
    if step < 1:
        raise OptionError(f"batch_size must be at least 1, got {batch_size}")
    with frozen(spec) as work:
        scores, classes, resolved = clean_pass(work, x, resolved)
        summed = SummedGradients(work, x, resolved, linear_input_layer(work.module, x, key=spec.module))
        for start in range(0, total_count, step):
            flat = torch.arange(start, min(start + step, total_count), device=x.device)
            s, b = flat // batch, flat % batch  # sample-major order
            if sigma is None:
                summed.add(x[b] + noise[b, s], b)
            else:
                summed.add(x[b] + sigma[b].view(-1, 1, 1, 1) * noise[s], b)
        total = summed.total()
    mean = total / samples
    params = {"samples": samples, "batch_size": batch_size,
              **({"noise": "explicit"} if sigma is None else {"noise_level": noise_level, "seed": seed})}
    return make_attribution(spec, "smoothgrad", attributions=mean, map=abs_max(mean), inputs=x, scores=scores,
                            classes=classes, target=target, params=params)
