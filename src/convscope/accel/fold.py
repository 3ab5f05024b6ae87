"""Fold eval-mode BatchNorm into the convolution before it, on a frozen working copy, for the duration of one call.

Attribution and feature visualization run a frozen working copy of the network (`hooks.frozen`) in eval mode, where
`BatchNorm2d` is a fixed per-channel affine map; folded into the preceding `Conv2d` (W' = W * g,
b' = (b - mean) * g + beta with g = gamma / sqrt(var + eps)) it costs nothing, forward or backward, and saves the
norm's output allocation. Values and gradients are the same function of the input (float rounding aside: ~1e-7
relative in float32). `fusions(...)` returns replacement modules (fused copies of the convs, `Identity` for the norms)
for `hooks.swap_modules` on the working copy; `folded(...)` does that for a block, reusing the copies while the
weights, buffers and modules are unchanged. The user's model is never touched: the swaps happen on the copy.

Pairs are found from the order of module calls in a probe pass (`accel.probe`: a conv whose call is immediately
followed by a norm call over the same shape); a pair touching a layer that must keep its own output is left alone.
The result is checked numerically on the probe: if the fused network's outputs differ from the original's (a conv
output also used elsewhere, say), no fusion is made.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from .. import hooks
from .probe import Probe, probe, run_layers
from .switch import enabled

__all__ = ["fusions", "folded"]

# working copy -> (state signature, {(kept layers, input shape, stop): replacements}, {conv path: fused copy}); one
# signature per copy at a time, and one fused copy per conv whatever the layers kept.
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
    # the copy is ours: store it channels-last, the layout the engine feeds to oneDNN
    fused.weight.data = fused.weight.data.contiguous(memory_format=torch.channels_last)
    return fused


def _pairs(net: nn.Module, calls: Sequence[tuple[str, torch.Size | None]], keep: set[str]) -> list[tuple[str, str]]:
    modules = dict(net.named_modules())
    count: dict[str, int] = {}
    for name, _ in calls:
        count[name] = count.get(name, 0) + 1
    pairs = []
    for (a, shape_a), (b, shape_b) in zip(calls, calls[1:]):
        conv, bn = modules.get(a), modules.get(b)
        if not (type(conv) is nn.Conv2d and type(bn) is nn.BatchNorm2d):
            continue
        if shape_a != shape_b or count[a] != 1 or count[b] != 1 or a in keep or b in keep:
            continue
        if bn.running_mean is None or bn.running_var is None or bn.num_features != conv.out_channels:
            continue
        pairs.append((a, b))
    return pairs


def fusions(net: nn.Module, seen: Probe, *, tolerance: float = 1e-4,
            made: dict[str, nn.Module] | None = None) -> dict[str, nn.Module]:
    """Replacements `{path: module}` folding each eval-mode conv -> batchnorm pair of `net` (a frozen working copy)
    that ran in the probe pass `seen`, or `{}` when there is none or folding would change the outputs of the probe's
    layers (or the model output) by more than `tolerance` relative to their scale. `made` maps conv paths to fused
    copies already built for the same weights; new ones are added to it. One more pass (with the fusions) checks."""
    keep = {hooks.split_call(name)[0] for name in seen.layers}
    pairs = _pairs(net, seen.calls, keep)
    if not pairs:
        return {}
    modules = dict(net.named_modules())
    replacements: dict[str, nn.Module] = {}
    made = {} if made is None else made
    for conv_name, bn_name in pairs:
        if conv_name not in made:
            made[conv_name] = _fold(modules[conv_name], modules[bn_name])
        replacements[conv_name] = made[conv_name]
        replacements[bn_name] = nn.Identity()
    try:
        with hooks.swap_modules(net, replacements):
            after = run_layers(net, seen.x, seen.layers, stop=seen.stop)
    except RuntimeError:  # the fused network does not run: leave it unfused
        return {}
    before = seen.outputs()
    if len(after) != len(before):
        return {}
    for a, b in zip(before, after):
        if a.shape != b.shape or (a - b).abs().max() > tolerance * (a.abs().max() + 1e-6):
            return {}
    return replacements


def _signature(net: nn.Module) -> tuple:
    """What the fused copies depend on: the module objects, and each weight and buffer's storage and version
    (in-place updates such as optimizer steps or `load_state_dict` bump the version; `Tensor._version` is public)."""
    tensors = [*net.parameters(), *net.buffers()]
    return (tuple(id(m) for m in net.modules()),
            tuple((t.data_ptr(), t._version, t.dtype, t.device) for t in tensors))


@contextlib.contextmanager
def folded(net: nn.Module, x: torch.Tensor, layers: Sequence[str] = (), *, stop: bool = False,
           seen: Probe | None = None) -> Iterator[int]:
    """Run the block with the eval-mode conv -> BatchNorm pairs of `net` (a frozen working copy) folded, except the
    pairs that touch `layers`; yields the number of folded pairs (0 when there are none or inside `accel.plain()`).

    `x` (1, C, H, W) is an input of the size the block will use; `stop` says whether the block's passes end after
    `layers`. `seen` is a probe pass already made on `x` with these layers (else one is made when the cache has
    nothing for this copy, layers, size and stop). The fused copies are cached per working copy while its modules,
    weights and buffers are unchanged."""
    if not enabled() or net.training:
        yield 0
        return
    signature = _signature(net)
    known = _CACHE.get(net)
    if known is None or known[0] != signature:
        known = _CACHE[net] = (signature, {}, {})
    names = tuple(n for n in layers if n)
    key = (tuple(sorted({hooks.split_call(n)[0] for n in names})), tuple(x.shape[1:]), stop and bool(names))
    if key not in known[1]:
        try:
            seen = seen if seen is not None else probe(net, x[:1], names, stop=stop)
        except RuntimeError:  # the model does not run on the probe: no fusion (the caller reports its own errors)
            seen = None
        known[1][key] = {} if seen is None else fusions(net, seen, made=known[2])
    replacements = known[1][key]
    with hooks.swap_modules(net, replacements):
        yield len(replacements) // 2
