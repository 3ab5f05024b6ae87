"""Fold eval-mode BatchNorm into the convolution before it, for the duration of one call.

Attribution and feature visualization run the frozen network in eval mode, where `BatchNorm2d` is a fixed
per-channel affine map; folded into the preceding `Conv2d` (W' = W * g, b' = (b - mean) * g + beta with
g = gamma / sqrt(var + eps)) it costs nothing, forward or backward, and saves the norm's output allocation. Values
and gradients are the same function of the input (float rounding aside: ~1e-7 relative in float32). The user's
model is not changed: `fusions(...)` returns replacement modules (fused copies of the convs, `Identity` for the
norms) for `hooks.swap_modules`, which puts the originals back; `folded(...)` does that for a block, reusing the
copies while the model's weights, buffers and modules are unchanged.

Pairs are found from the order of module calls in a probe pass (a conv whose call is immediately followed by a
norm call over the same shape); a pair touching a layer the objective reads is left alone. The result is checked
numerically on the probe: if the fused network's activations differ from the original's (a conv output also used
elsewhere, say), no fusion is made.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator, Sequence
from contextvars import ContextVar

import torch
from torch import nn

from . import hooks

__all__ = ["fusions", "folded", "no_folding"]

_ENABLED: ContextVar[bool] = ContextVar("convscope_fold_batchnorm", default=True)
# model -> (state signature, {(kept layers, input shape): replacements}, {conv path: fused copy}); one signature
# per model at a time, and one fused copy per conv whatever the layers kept.
_CACHE: "weakref.WeakKeyDictionary[nn.Module, tuple[tuple, dict, dict]]" = weakref.WeakKeyDictionary()


def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    fused = nn.utils.skip_init(nn.Conv2d, conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                               conv.padding, conv.dilation, conv.groups, bias=True, padding_mode=conv.padding_mode,
                               device=conv.weight.device, dtype=conv.weight.dtype)
    with torch.no_grad():
        g = bn.weight / torch.sqrt(bn.running_var + bn.eps) if bn.affine else 1.0 / torch.sqrt(bn.running_var + bn.eps)
        beta = bn.bias if bn.affine else torch.zeros_like(bn.running_mean)
        bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        fused.weight.copy_(conv.weight * g.view(-1, 1, 1, 1))
        fused.bias.copy_((bias - bn.running_mean) * g + beta)
    fused.eval()
    fused.requires_grad_(False)
    # the copy is ours: store it channels-last, the layout the render loop feeds to oneDNN
    fused.weight.data = fused.weight.data.contiguous(memory_format=torch.channels_last)
    return fused


def _pairs(model: nn.Module, probe: torch.Tensor, keep: set[str]) -> list[tuple[str, str]]:
    modules = dict(model.named_modules())
    with torch.no_grad(), hooks.record_calls(model) as log:
        model(probe)
    calls: dict[str, int] = {}
    for name, _ in log:
        calls[name] = calls.get(name, 0) + 1
    pairs = []
    for (a, shape_a), (b, shape_b) in zip(log, log[1:]):
        conv, bn = modules.get(a), modules.get(b)
        if not (type(conv) is nn.Conv2d and type(bn) is nn.BatchNorm2d):
            continue
        if shape_a != shape_b or calls[a] != 1 or calls[b] != 1 or a in keep or b in keep:
            continue
        if bn.running_mean is None or bn.running_var is None or bn.num_features != conv.out_channels:
            continue
        pairs.append((a, b))
    return pairs


def fusions(model: nn.Module, probe: torch.Tensor, layers: Sequence[str], *, tolerance: float = 1e-4,
            made: dict[str, nn.Module] | None = None) -> dict[str, nn.Module]:
    """Replacements `{path: module}` folding each eval-mode conv -> batchnorm pair of `model` (already in eval
    mode), or `{}` when there is none or folding would change the activations of `layers` (or the output) on
    `probe` (1, C, H, W) by more than `tolerance` relative to their scale. `made` maps conv paths to fused
    copies already built for the same weights; new ones are added to it."""
    keep = {hooks.split_call(name)[0] for name in layers}
    if model.training:
        return {}
    try:
        pairs = _pairs(model, probe, keep)
    except RuntimeError:  # the model does not run on the probe: no fusion (render reports its own errors)
        return {}
    if not pairs:
        return {}
    modules = dict(model.named_modules())
    replacements: dict[str, nn.Module] = {}
    made = {} if made is None else made
    for conv_name, bn_name in pairs:
        if conv_name not in made:
            made[conv_name] = _fold(modules[conv_name], modules[bn_name])
        replacements[conv_name] = made[conv_name]
        replacements[bn_name] = nn.Identity()
    names = [n for n in layers if n]
    x = torch.randn(probe.shape, generator=torch.Generator().manual_seed(0)).to(probe)

    def outputs() -> list[torch.Tensor]:
        with torch.no_grad(), hooks.capture(model, names) as cap:
            out = model(x)
            got = [cap[n] for n in names]
        return got + ([out] if isinstance(out, torch.Tensor) else [])

    before = outputs()
    with hooks.swap_modules(model, replacements):
        after = outputs()
    for a, b in zip(before, after):
        if a.shape != b.shape or (a - b).abs().max() > tolerance * (a.abs().max() + 1e-6):
            return {}
    return replacements


def _signature(model: nn.Module) -> tuple:
    """What the fused copies depend on: the module objects, and each weight and buffer's storage and version
    (in-place updates such as optimizer steps or `load_state_dict` bump the version)."""
    tensors = [*model.parameters(), *model.buffers()]
    return (tuple(id(m) for m in model.modules()),
            tuple((t.data_ptr(), t._version, t.dtype, t.device) for t in tensors))


@contextlib.contextmanager
def no_folding() -> Iterator[None]:
    """Inside this block no BatchNorm is folded (Grad-CAM, deletion/insertion scores and `render` run the model's
    own modules; `render(fuse=False)` also leaves out its other kernels): for hooks of your own on BatchNorm
    modules, or to compare with another tool bit for bit."""
    token = _ENABLED.set(False)
    try:
        yield
    finally:
        _ENABLED.reset(token)


@contextlib.contextmanager
def folded(model: nn.Module, probe: torch.Tensor, layers: Sequence[str] = ()) -> Iterator[int]:
    """Run the block with `model`'s eval-mode conv -> BatchNorm pairs folded (the pairs that touch `layers` are
    left alone); yields the number of folded pairs (0 when there are none, folding is off, or the model is in
    training mode). `probe` (1, C, H, W) is an input of the size the block will use. The fused copies are cached
    per model, layers and input shape while the model's modules, weights and buffers are unchanged."""
    if not _ENABLED.get() or model.training:
        yield 0
        return
    signature = _signature(model)
    known = _CACHE.get(model)
    if known is None or known[0] != signature:
        known = _CACHE[model] = (signature, {}, {})
    key = (tuple(sorted({hooks.split_call(n)[0] for n in layers if n})), tuple(probe.shape[1:]))
    if key not in known[1]:
        known[1][key] = fusions(model, probe[:1], layers, made=known[2])
    replacements = known[1][key]
    with hooks.swap_modules(model, replacements):
        yield len(replacements) // 2
