"""The only place convscope registers hooks or changes a model, always inside a context manager.

Every context here undoes what it did in `finally`, so no hook, swapped module, training flag or `requires_grad`
change survives a call, whether it succeeds, gets a bad target, or the model raises mid-forward.

- `frozen(model)`: a private working copy of the model (eval mode, no parameter gradients) to run, hook and
  rewrite for the length of the block; the model itself is never changed.
- `capture(model, layers)`: record activations (and optionally gradients) of layers by `named_modules()` path;
  a module that runs several times per forward pass is addressed as `name#k`, a module's input (its first
  argument) as `name:input`; `stop=True` skips the rest of the network once every requested layer has run.
- `swap_modules(model, {path: module})`: temporarily replace submodules.
- `function_mode(mode)`: run code under a `TorchFunctionMode` (how guided/deconv ReLU rules reach functional ReLUs).
- `record_calls(model)`: log every module call of a forward pass with its output shape (layer listings);
  `record_inputs(model, paths)`: keep the inputs of some modules (probe passes).

TorchScript models allow no hooks and no module swaps (`register_forward_hook is not supported on ScriptModules`,
for scripted, traced and loaded ones alike; a traced module's submodule hooks would never fire): every context here
refuses them with one `TorchScriptError` that lists what does work on TorchScript, except a `capture` of no layer
(a run that reads only the model's output).

This module imports nothing of convscope but `errors` and `_working`, so everything may build on it.
"""

from __future__ import annotations

import dataclasses
import weakref
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TypeVar

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from ._working import copyable, working_copy
from .errors import AmbiguousLayerError, LayerNotFoundError, TorchScriptError, suggest

__all__ = [
    "Capture",
    "capture",
    "frozen",
    "swap_modules",
    "function_mode",
    "get_module",
    "module_path",
    "split_call",
    "INPUT_SUFFIX",
    "hook_count",
    "record_calls",
    "record_inputs",
    "saved_tensor_bytes",
]


# What runs on a TorchScript model: everything that needs only its input gradient or its output (README).
TORCHSCRIPT_WORKS = ("predict", "evaluate", "saliency", "smoothgrad", "integrated gradients", "occlusion",
                     "adversarial", "class-model")


def refuse_torchscript(model: nn.Module, what: str) -> None:
    """Raise `TorchScriptError` if `model` is TorchScript (scripted, traced or loaded): `what` needs hooks."""
    if isinstance(model, torch.jit.ScriptModule):
        raise TorchScriptError(
            f"{what} needs the model's layers (hooks, submodules), which a TorchScript model does not give. On "
            f"TorchScript, convscope runs {', '.join(TORCHSCRIPT_WORKS)}; for layers, load the Python model (a state "
            "dict with --arch, or a file.py:factory)")


def split_call(name: str) -> tuple[str, int | None]:
    """`"layer1.0.relu#1"` -> `("layer1.0.relu", 1)`; `"conv1"` -> `("conv1", None)`."""
    if "#" in name:
        base, _, k = name.rpartition("#")
        if not k.isdigit():
            raise LayerNotFoundError(f"layer {name!r}: the part after '#' must be a call index like '#0'")
        return base, int(k)
    return name, None


# `"fc2:input"` names what goes INTO fc2 (its first argument), e.g. the pooled features a classifier reads.
INPUT_SUFFIX = ":input"


def get_module(model: nn.Module, name: str) -> nn.Module:
    """`model.get_submodule(name)` with an error naming the closest existing paths ("" is the model itself)."""
    if name:
        refuse_torchscript(model, f"layer {name!r}")
    try:
        return model.get_submodule(name) if name else model
    except AttributeError:
        names = [n for n, _ in model.named_modules() if n]
        raise LayerNotFoundError(
            f"layer {name!r} is not in {type(model).__name__}.{suggest(name, names)} "
            "List the layers with `convscope layers MODEL`."
        ) from None


def module_path(model: nn.Module, module: nn.Module) -> str:
    """The `named_modules()` path of `module` in `model` (its first path when it is registered twice)."""
    for name, candidate in model.named_modules():
        if candidate is module:
            return name
    raise LayerNotFoundError(f"the {type(module).__name__} module passed as a layer is not part of "
                             f"{type(model).__name__}")


def hook_count(model: nn.Module) -> int:
    """How many hooks of any kind are registered on the model's modules (0 for a clean model)."""
    total = 0
    for module in model.modules():
        for attr in (
            "_forward_hooks",
            "_forward_pre_hooks",
            "_backward_hooks",
            "_backward_pre_hooks",
            "_state_dict_hooks",
            "_load_state_dict_pre_hooks",
        ):
            total += len(getattr(module, attr, {}) or {})
    return total


M = TypeVar("M")


@contextmanager
def frozen(model: M) -> Iterator[M]:
    """A private working copy of `model` for the block: eval mode, no parameter requiring grad, the user's model
    untouched (see `convscope._working`). Work on the YIELDED module: run it, capture from it, swap its modules.

    `model` is an `nn.Module` (yields the copy) or anything with a `module` attribute that `dataclasses.replace`
    accepts, such as a `ModelSpec` (yields the same spec around the copy). Gradients flow to inputs only: no weight
    gradient is computed or accumulated, and the user's `requires_grad` flags, training flags, modules and hooks
    stay as they are, even for another thread using the model at the same time.

    TorchScript modules cannot be copied: for them (and models containing one) the block runs the model itself in
    eval mode without parameter gradients, and the flags are restored on exit (the old, in-place behaviour).
    """
    module = model if isinstance(model, nn.Module) else getattr(model, "module", None)
    if not isinstance(module, nn.Module):
        raise TypeError(f"frozen() takes an nn.Module or a ModelSpec, got {type(model).__name__}")
    with (working_copy(module) if copyable(module) else _frozen_in_place(module)) as work:
        yield work if model is module else dataclasses.replace(model, module=work)  # type: ignore[misc]


@contextmanager
def _frozen_in_place(model: nn.Module) -> Iterator[nn.Module]:
    training = {m: m.training for m in model.modules()}
    grads = {p: p.requires_grad for p in model.parameters()}
    try:
        model.eval()
        for p in grads:
            p.requires_grad_(False)
        yield model
    finally:
        for m, flag in training.items():
            m.training = flag
        for p, flag in grads.items():
            p.requires_grad_(flag)


class _StopForward(Exception):
    """Raised inside a forward pass once every requested layer has run (capture(stop=True))."""


@dataclass
class Capture:
    """What `capture` recorded during the last forward (and backward) pass.

    `activations["layer"]` is the layer's output tensor (B, C, H, W) or (B, F). With `detach=True` (default) it is a
    detached copy, safe from in-place ops that run later in the network; with `detach=False` it is the live tensor
    in the autograd graph (later in-place ops act on a copy handed downstream instead). `gradients["layer"]` is
    d(whatever was backpropagated)/d(activation), filled during `backward()` when `gradients=True`.
    """

    requested: tuple[str, ...]
    model: nn.Module | None = None
    stop: bool = False
    needed: dict[str, int] = field(default_factory=dict)
    calls: dict[str, list[torch.Tensor]] = field(default_factory=lambda: defaultdict(list))
    grads: dict[str, dict[int, torch.Tensor]] = field(default_factory=lambda: defaultdict(dict))
    stopped: bool = False

    def _pick(self, name: str) -> tuple[str, int]:
        base, k = split_call(name)
        n = len(self.calls.get(base, []))
        if n == 0:
            raise LayerNotFoundError(f"layer {base!r} did not run in the forward pass (is it used by forward()?)")
        if k is None:
            if n > 1 and not self.stopped:
                options = ", ".join(f"'{base}#{i}'" for i in range(n))
                raise AmbiguousLayerError(
                    f"layer {base!r} runs {n} times per forward pass; address one call: {options}"
                )
            return base, 0
        if k >= n:
            raise LayerNotFoundError(f"layer {base!r} ran {n} time(s); call #{k} does not exist (use #0..#{n - 1})")
        return base, k

    @property
    def activations(self) -> dict[str, torch.Tensor]:
        return {name: self.calls[base][k] for name in self.requested for base, k in [self._pick(name)]}

    @property
    def gradients(self) -> dict[str, torch.Tensor]:
        out = {}
        for name in self.requested:
            base, k = self._pick(name)
            if k not in self.grads[base]:
                raise RuntimeError(f"no gradient reached layer {name!r}: was backward() called inside capture()?")
            out[name] = self.grads[base][k]
        return out

    def __getitem__(self, name: str) -> torch.Tensor:
        base, k = self._pick(name)
        return self.calls[base][k]

    def call_counts(self) -> dict[str, int]:
        return {name: len(v) for name, v in self.calls.items()}

    def run(self, x: torch.Tensor) -> torch.Tensor | None:
        """Run the model on `x` and return its output, or `None` when `stop=True` cut the pass short."""
        assert self.model is not None
        if not self.stop:
            return self.model(x)
        return _run_stopping(self, x)


# For capture(stop=True): how many times each module runs per forward, learned from one full pass per input shape.
_CALL_COUNTS: "weakref.WeakKeyDictionary[nn.Module, dict[tuple, dict[str, int]]]" = weakref.WeakKeyDictionary()


@contextmanager
def capture(
    model: nn.Module,
    layers: Sequence[str | nn.Module] | str | nn.Module,
    *,
    gradients: bool = False,
    detach: bool = True,
    stop: bool = False,
    leaves: Sequence[str] = (),
    consume: Callable[[str, int, torch.Tensor], None] | None = None,
) -> Iterator[Capture]:
    """Record the outputs of `layers` during forward passes run inside the block.

    Args:
        model: the network; it is not modified (hooks are removed on exit, even on error).
        layers: `named_modules()` paths (`"layer4.1.conv2"`, `"layer1.0.relu#1"` for the second call), or modules.
            `"fc2:input"` (`"relu:input#1"`) records a module's input (its first argument) instead of its output.
        gradients: also record the gradient w.r.t. each captured output during `backward()` (implies `detach=False`
            for the graph, while `activations` still returns the tensors seen in forward).
        detach: store detached copies (default). `False` keeps live tensors in the graph (e.g. for Grad-CAM).
        stop: with `cap.run(x)`, end the forward pass as soon as every requested layer ran, skipping the rest of
            the network (the first pass per input shape runs fully, to learn which modules run more than once).
        leaves: names among `layers` whose output becomes a new leaf requiring grad (implies live tensors): the
            autograd graph then starts there, so a backward to them costs only the network after them, even with
            nothing upstream requiring grad (Grad-CAM on a frozen model).
        consume: stream instead of storing: `consume(path, k, output)` is called inside the hook with call `k` of
            each requested module's live output, and nothing is kept (`cap[name]` is then `None`). It must neither
            change nor keep the tensor (ops later in the network may change it in place). Saves one copy of every
            captured output (dataset scans reduce many layers per batch this way).

    Each forward pass starts a new recording. Yields a `Capture`.
    """
    if isinstance(layers, (str, nn.Module)):
        layers = [layers]
    if isinstance(model, torch.jit.ScriptModule) and not layers:  # nothing to record: the output needs no hook
        yield Capture(requested=(), model=model, stop=False)
        return
    names = tuple(n if isinstance(n, str) else module_path(model, n) for n in layers)
    refuse_torchscript(model, f"reading layer {', '.join(repr(n) for n in names)}")
    bases = {}
    for name in names:
        base, _ = split_call(name)
        bases[base] = get_module(model, base.removesuffix(INPUT_SUFFIX))
    record = Capture(requested=names, model=model, stop=stop)
    live = gradients or not detach or bool(leaves)
    leaf_calls = {(base, k or 0) for base, k in map(split_call, leaves)}
    handles = []
    needed = record.needed

    def reset(_module, _args):
        record.calls.clear()
        record.grads.clear()
        record.stopped = False

    def make_hook(base: str):
        def hook(_module, _args, output):
            if not isinstance(output, torch.Tensor):
                what = "takes" if base.endswith(INPUT_SUFFIX) else "returns"
                raise TypeError(f"layer {base!r} {what} {type(output).__name__}, not a tensor; pick a tensor layer")
            k = len(record.calls[base])
            replacement = None
            if consume is not None:
                consume(base, k, output)
                stored = None
            elif live:
                stored = output.detach().requires_grad_(True) if (base, k) in leaf_calls else output
                if gradients and stored.requires_grad:
                    stored.register_hook(lambda g, base=base, k=k: record.grads[base].__setitem__(k, g))
                # Downstream in-place ops must not rewrite what we keep: hand them a copy.
                replacement = stored.clone()
            else:
                stored = output.detach().clone()
            record.calls[base].append(stored)
            if stop and needed and all(len(record.calls.get(b, ())) >= c for b, c in needed.items()):
                record.stopped = True
                raise _StopForward
            return replacement

        return hook

    def make_input_hook(hook):
        def pre_hook(module, args):
            replacement = hook(module, args, args[0] if args else None)
            return None if replacement is None else (replacement, *args[1:])

        return pre_hook

    try:
        handles.append(model.register_forward_pre_hook(reset))
        for base, module in bases.items():
            if base.endswith(INPUT_SUFFIX):
                handles.append(module.register_forward_pre_hook(make_input_hook(make_hook(base))))
            else:
                handles.append(module.register_forward_hook(make_hook(base)))
        yield record
    finally:
        for handle in handles:
            handle.remove()


def _run_stopping(record: Capture, x: torch.Tensor) -> torch.Tensor | None:
    model, needed, names = record.model, record.needed, record.requested
    key = tuple(x.shape[1:])
    counts = _CALL_COUNTS.setdefault(model, {}).get(key)
    if counts is None:  # first pass: run fully to learn how often each module runs
        needed.clear()
        try:
            out = model(x)
        except RuntimeError:
            # The rest of the network may not run at this input size (a Linear after Flatten, say); when every
            # requested layer has run by then, stopping after them is all the caller needs.
            if not all(split_call(name)[0] in record.calls for name in names):
                raise
            out = None
            record.stopped = True
        _CALL_COUNTS[model][key] = record.call_counts()
        for name in names:
            record._pick(name)  # raise on ambiguity now
        return out
    needed.clear()
    for name in names:
        base, k = split_call(name)
        total = counts.get(base, 0)
        if k is None and total > 1:
            options = ", ".join(f"'{base}#{i}'" for i in range(total))
            raise AmbiguousLayerError(f"layer {base!r} runs {total} times per forward pass; address one call: {options}")
        needed[base] = max(needed.get(base, 0), (k or 0) + 1)
    try:
        return model(x)
    except _StopForward:
        return None


@contextmanager
def swap_modules(model: nn.Module, replacements: Mapping[str, nn.Module]) -> Iterator[nn.Module]:
    """Temporarily replace submodules by path (`{"features.1": nn.Identity()}`); the originals return on exit."""
    originals = []
    if replacements:
        refuse_torchscript(model, f"replacing {', '.join(map(repr, replacements))}")
    try:
        for path, new in replacements.items():
            parent_path, _, attr = path.rpartition(".")
            parent = get_module(model, parent_path)
            if not hasattr(parent, attr):
                get_module(model, path)  # raises with suggestions
            originals.append((parent, attr, getattr(parent, attr)))
            setattr(parent, attr, new)
        yield model
    finally:
        for parent, attr, old in reversed(originals):
            setattr(parent, attr, old)


@contextmanager
def function_mode(mode: TorchFunctionMode) -> Iterator[TorchFunctionMode]:
    """Run the block under a `TorchFunctionMode`: it sees every torch function call, module or functional."""
    with mode:
        yield mode


@contextmanager
def record_calls(model: nn.Module) -> Iterator[list[tuple[str, torch.Size | None]]]:
    """Log every submodule call made inside the block as `(path, output shape)`, in the order calls finish
    (a container after its children); the shape is `None` for non-tensor outputs. Nothing is kept but shapes.

    The k-th entry of a path is its call `path#k`, as `capture` addresses it.
    """
    refuse_torchscript(model, "following a forward pass layer by layer")
    log: list[tuple[str, torch.Size | None]] = []
    handles = []

    def make_hook(name: str):
        def hook(_module, _args, output):
            log.append((name, output.shape if isinstance(output, torch.Tensor) else None))

        return hook

    try:
        for name, module in model.named_modules():
            if name:
                handles.append(module.register_forward_hook(make_hook(name)))
        yield log
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def record_inputs(model: nn.Module, paths: Sequence[str]) -> Iterator[dict[str, torch.Tensor]]:
    """Keep the (single tensor, positional) input of the first call of each module in `paths` made inside the block,
    detached, under its path; modules called with anything else are left out."""
    found: dict[str, torch.Tensor] = {}
    handles = []

    def make_hook(name: str):
        def hook(_module, args):
            if name not in found and len(args) == 1 and isinstance(args[0], torch.Tensor):
                found[name] = args[0].detach()

        return hook

    try:
        for path in paths:
            handles.append(get_module(model, path).register_forward_pre_hook(make_hook(path)))
        yield found
    finally:
        for handle in handles:
            handle.remove()


class SavedBytes:
    """What `saved_tensor_bytes` counted: `bytes` autograd saved for backward inside the block."""

    bytes: int = 0


@contextmanager
def saved_tensor_bytes() -> Iterator[SavedBytes]:
    """Count the bytes autograd saves for backward in the block (an activation-memory estimate; a tensor saved by
    several ops counts each time). Tensors are stored unchanged; the autograd hook is removed on exit."""
    counter = SavedBytes()

    def pack(t: torch.Tensor) -> torch.Tensor:
        counter.bytes += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield counter
