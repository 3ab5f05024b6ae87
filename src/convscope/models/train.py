"""Training the seed networks: Adam + cross-entropy, seeded and reproducible on CPU, with checkpoints and resume.

The saved `.safetensors` file is a model string of its own: its metadata records the architecture, channels, input
size, mean/std, class names, seed, epochs, held-out accuracy and the command, so `convscope.models.load(path)`
needs no `arch`. Checkpoints `NAME.epoch{N}.safetensors` (plus `NAME.epoch{N}.optim.safetensors` with the Adam
state, for `resume`) let one view how features evolve during training.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import ConvscopeError, DatasetError
from ..results import Recipe, ResultRepr, versions
from .files import read_safetensors, save_safetensors
from .loading import load, parse_options, seeded
from .registry import get_entry
from .spec import ModelSpec

__all__ = ["TrainResult", "train", "arch_string", "checkpoint_path"]


@dataclass(frozen=True)
class TrainResult(ResultRepr):
    """A trained model and how it got there.

    Attributes:
        spec: the trained model (eval mode) with its preprocessing and class names.
        path: the saved file, or None when `out` was not given.
        accuracy: held-out top-1 accuracy after the last epoch (None without held-out data).
        history: one dict per epoch: `epoch`, `loss` (mean training loss), `train_accuracy`, `heldout_accuracy`.
        metadata: what the file's metadata records.
    """

    spec: ModelSpec
    path: Path | None
    accuracy: float | None
    history: tuple[dict[str, Any], ...]
    metadata: dict[str, Any]
    recipe: Recipe


def checkpoint_path(out: str | Path, epoch: int) -> Path:
    """`model.safetensors`, 3 -> `model.epoch3.safetensors`."""
    out = Path(out)
    return out.with_name(f"{out.stem}.epoch{epoch}{out.suffix or '.safetensors'}")


def _optim_path(checkpoint: Path) -> Path:
    return checkpoint.with_name(checkpoint.stem + ".optim.safetensors")


def arch_string(arch: str, *, channels: int, num_classes: int, size: tuple[int, int]) -> str:
    """`"cnn4"` -> `"convscope:cnn4,channels=3,num_classes=5,size=32x32"` (other model strings: unchanged)."""
    scheme, colon, rest = arch.partition(":")
    if colon and scheme != "convscope":
        return arch
    name, options = parse_options(rest if colon else arch)
    get_entry(name)  # unknown names raise with suggestions
    options.update(channels=channels, num_classes=num_classes, size=f"{size[0]}x{size[1]}")
    return f"convscope:{name}," + ",".join(f"{k}={v}" for k, v in options.items())


def _default_size(arch: str, dataset: Any) -> tuple[int, int]:
    from ..data import ArrayDataset

    if isinstance(dataset, ArrayDataset) or getattr(dataset, "dataset", None).__class__ is ArrayDataset:
        return tuple(int(s) for s in dataset.load(0).shape[-2:])  # type: ignore[return-value]
    scheme, colon, rest = arch.partition(":")
    if colon and scheme != "convscope":
        raise DatasetError(f"give --size H W for training {arch!r} on {dataset.name!r}")
    return get_entry(parse_options(rest if colon else arch)[0]).input_size


def _split(data: Any, dataset: Any, heldout: Any, fraction: float, seed: int) -> tuple[Any, Any | None, str]:
    """(training set, held-out set, how the held-out set was chosen)."""
    from ..data import DATASET_NAMES, Subset, resolve
    from ..data.resolve import _find_idx

    if heldout is not None:
        held = resolve(heldout, split="test", channels=dataset.channels)
        return dataset, held, f"given: {held.name}"
    named = isinstance(data, str) and data.lower() in DATASET_NAMES and not Path(data).exists()
    if named or (isinstance(data, (str, Path)) and Path(data).is_dir() and _find_idx(Path(data), "test")):
        held = resolve(data, split="test", channels=dataset.channels)
        return dataset, held, f"test split: {held.name}"
    if fraction <= 0:
        return dataset, None, "none"
    order = np.random.default_rng(seed).permutation(len(dataset))
    cut = max(1, int(round(len(dataset) * fraction)))
    if cut >= len(dataset):
        raise DatasetError(f"dataset {dataset.name!r} has too few items ({len(dataset)}) for a held-out split")
    return (Subset(dataset, np.sort(order[cut:]), name=f"{dataset.name}[train]"),
            Subset(dataset, np.sort(order[:cut]), name=f"{dataset.name}[heldout]"),
            f"{fraction:.0%} of {dataset.name} (seed {seed})")


def _save_optimizer(optimizer: torch.optim.Optimizer, path: Path, epoch: int) -> None:
    tensors = {}
    for index, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            tensors[f"{index}.{key}"] = torch.as_tensor(value)
    save_safetensors(tensors, path, {"epoch": epoch})


def _load_optimizer(optimizer: torch.optim.Optimizer, path: Path) -> None:
    tensors, _ = read_safetensors(path)
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        index, _, name = key.partition(".")
        state.setdefault(int(index), {})[name] = value
    current = optimizer.state_dict()
    optimizer.load_state_dict({"state": state, "param_groups": current["param_groups"]})


def _last_checkpoint(out: Path) -> tuple[int, Path] | None:
    pattern = re.compile(re.escape(out.stem) + r"\.epoch(\d+)" + re.escape(out.suffix or ".safetensors") + "$")
    found = []
    for candidate in out.parent.glob(f"{out.stem}.epoch*"):
        match = pattern.match(candidate.name)
        if match and _optim_path(candidate).is_file():
            found.append((int(match[1]), candidate))
    return max(found) if found else None


def train(arch: str, data: Any, *, epochs: int = 5, batch_size: int = 64, lr: float = 1e-3, seed: int = 0,
          size: tuple[int, int] | None = None, channels: int | None = None, heldout: Any = None,
          heldout_fraction: float = 0.1, out: str | Path | None = None, checkpoint_every: int | None = None,
          resume: bool = False, half: bool = False, device: str | torch.device | None = None,
          command: str | None = None, progress: Callable[[int, int], None] | None = None,
          log: Callable[[str], None] | None = None,
          status: Callable[[dict[str, Any]], None] | None = None) -> TrainResult:
    """Train architecture `arch` (`small-cnn`, `small-cnn-s2`, `cnn4`, or a model string) on `data` with Adam and
    cross-entropy.

    Args:
        data: anything `convscope.data.resolve` accepts; a name means its training split.
        heldout: data to measure accuracy on after each epoch. Default: the test split of a named / IDX dataset,
            else a seeded `heldout_fraction` of `data` (0 disables it).
        size, channels: input size (H, W) and channel count; default: the data's (arrays) or the arch's (folders).
        out: the `.safetensors` file to write; checkpoints go next to it every `checkpoint_every` epochs.
        resume: continue from the last checkpoint next to `out` (same result as an uninterrupted run).
        half: store float16 weights (half the file size).
        progress: `progress(items, total)` after each training batch (total = items of all remaining epochs);
            log: called with a line per epoch. status: called after each training batch with `{"epoch", "epochs",
            "loss", "accuracy", "heldout_accuracy"}`: the running mean loss and training accuracy of the epoch so far,
            and the held-out accuracy after the previous epoch (None before the first).

    Same seed, same data, same thread count -> identical weights on CPU. The global random state is untouched.
    """
    from ..data import batches, resolve
    from .predict import evaluate

    if epochs < 1 or batch_size < 1 or lr <= 0:
        raise ConvscopeError(f"epochs ({epochs}) and batch size ({batch_size}) must be >= 1 and lr ({lr}) > 0")
    full = resolve(data, split="train", channels=channels)
    trainset, heldset, heldout_note = _split(data, full, heldout, heldout_fraction, seed)
    size = tuple(size) if size else _default_size(arch, trainset)  # type: ignore[assignment]
    model_string = arch_string(arch, channels=channels or full.channels, num_classes=len(full.classes), size=size)
    spec = load(model_string, seed=seed, device=device)
    spec.class_names = list(full.classes)
    module = spec.module
    optimizer = torch.optim.Adam(module.parameters(), lr=lr)
    history: list[dict[str, Any]] = []
    start = 1
    if resume:
        if out is None:
            raise ConvscopeError("resume needs the output path (-o) whose checkpoints to continue from")
        last = _last_checkpoint(Path(out))
        if last is not None:
            start = _resume_from(last, spec, optimizer, model_string, seed, lr, batch_size, history) + 1
            if log:
                log(f"resuming after epoch {start - 1} from {last[1]}")
    metadata: dict[str, Any] = {
        "convscope": "1", "arch": model_string, "channels": spec.channels, "input_size": list(spec.input_size),
        "resize": None, "mean": list(spec.mean) if spec.mean else None, "std": list(spec.std) if spec.std else None,
        "class_names": spec.class_names, "seed": seed, "batch_size": batch_size, "lr": lr,
        "optimizer": "Adam", "loss": "cross_entropy", "dataset": trainset.name, "train_items": len(trainset),
        "heldout": heldout_note, "dtype": "float16" if half else "float32", "command": command,
        "versions": versions(),
    }
    loss_fn = nn.CrossEntropyLoss()
    with seeded(seed):
        for epoch in range(start, epochs + 1):
            torch.manual_seed(seed * 1_000_003 + epoch)  # dropout noise: a function of (seed, epoch), for resume
            order = torch.randperm(len(trainset), generator=torch.Generator().manual_seed(seed + 7919 * epoch))
            module.train()
            total_loss, hits, seen = 0.0, 0, 0
            for batch in batches(trainset, spec, batch_size, order=order.numpy()):
                if len(batch.labels) < 2 and any(isinstance(m, nn.modules.batchnorm._BatchNorm)
                                                 for m in module.modules()):
                    continue  # batch norm cannot train on a single item
                labels = batch.labels.to(spec.device)
                optimizer.zero_grad(set_to_none=True)
                output = module(batch.inputs)
                loss = loss_fn(output, labels)
                loss.backward()
                optimizer.step()
                total_loss += loss.detach().item() * len(labels)
                hits += int((output.argmax(1) == labels).sum())
                seen += len(labels)
                if progress:
                    progress(len(labels), len(trainset) * (epochs - start + 1))
                if status:
                    status({"epoch": epoch, "epochs": epochs, "loss": total_loss / seen, "accuracy": hits / seen,
                            "heldout_accuracy": history[-1]["heldout_accuracy"] if history else None})
            module.eval()
            record: dict[str, Any] = {"epoch": epoch, "loss": total_loss / max(seen, 1),
                                      "train_accuracy": hits / max(seen, 1), "heldout_accuracy": None}
            if heldset is not None:
                record["heldout_accuracy"] = evaluate(spec, heldset, batch_size=256).top1
            history.append(record)
            if log:
                held = record["heldout_accuracy"]
                log(f"epoch {epoch}/{epochs}: loss {record['loss']:.4f}, train accuracy {record['train_accuracy']:.4f}"
                    + (f", held-out accuracy {held:.4f}" if held is not None else ""))
            if out is not None and checkpoint_every and epoch % checkpoint_every == 0 and epoch < epochs:
                path = checkpoint_path(out, epoch)
                _write(module, path, metadata, history, epoch, half)
                _save_optimizer(optimizer, _optim_path(path), epoch)
    module.eval()
    accuracy = history[-1]["heldout_accuracy"] if history else None
    path = _write(module, Path(out), metadata, history, epochs, half) if out is not None else None
    final = {**metadata, "epochs": epochs, "accuracy": accuracy, "history": history}
    spec.source = {**spec.source, "model": str(path) if path else model_string, "arch": model_string,
                   "seed": seed, "epochs": epochs}
    recipe = Recipe("train", spec.describe(), {k: final[k] for k in ("dataset", "seed", "batch_size", "lr",
                                                                       "heldout", "epochs", "dtype")})
    return TrainResult(spec, path, accuracy, tuple(history), final, recipe)


def _write(module: nn.Module, path: Path, metadata: dict[str, Any], history: list[dict[str, Any]], epoch: int,
           half: bool) -> Path:
    accuracy = history[-1]["heldout_accuracy"] if history else None
    return save_safetensors(module, path, {**metadata, "epochs": epoch, "accuracy": accuracy, "history": history},
                            dtype=torch.float16 if half else None)


def _resume_from(last: tuple[int, Path], spec: ModelSpec, optimizer: torch.optim.Optimizer, model_string: str,
                 seed: int, lr: float, batch_size: int, history: list[dict[str, Any]]) -> int:
    from .files import load_weights_into

    epoch, path = last
    state, metadata = read_safetensors(path)
    recorded = (metadata.get("arch"), metadata.get("seed"), metadata.get("lr"), metadata.get("batch_size"))
    if recorded != (model_string, seed, lr, batch_size):
        raise ConvscopeError(f"cannot resume from {str(path)!r}: it was trained with arch/seed/lr/batch size "
                             f"{recorded}, this run asks for {(model_string, seed, lr, batch_size)}")
    load_weights_into(spec.module, state, source=str(path), arch=model_string)
    _load_optimizer(optimizer, _optim_path(path))
    history.extend(metadata.get("history") or [])
    return epoch
