"""Model strings -> `ModelSpec`: one string loads any model.

    torchvision:NAME                 random init (seeded), preprocessing of the architecture's DEFAULT weights
    torchvision:NAME@WEIGHTS         pretrained, e.g. torchvision:mobilenet_v2@IMAGENET1K_V1 (or @DEFAULT)
    timm:NAME / timm:NAME@TAG        random init / pretrained (`@default` for timm's default tag); needs timm
    convscope:NAME                   built-ins: small-cnn, small-cnn-s2, cnn4 (untrained, seeded), fashion-cnn
    FILE.pt / .pth / .torchscript    TorchScript archive
    FILE.safetensors / .pth / .pt    weights; the architecture comes from the file's convscope metadata or `arch`
                                     (`arch="torchvision:NAME@WEIGHTS"` also takes those weights' preprocessing and
                                     class names, from the metadata alone: nothing is downloaded)
    path/to/file.py:fn               a Python factory returning an nn.Module or a ModelSpec

Builder options follow the name after commas: `convscope:cnn4,channels=1,num_classes=5,size=28`,
`torchvision:resnet18,num_classes=5`, `factory.py:make,width=16`.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ModelLoadError, suggest
from .files import (file_digest, is_torchscript, load_torchscript, load_weights_into, read_safetensors,
                    read_state_dict)
from .registry import get_entry, weights_path
from .spec import ModelSpec, spec_for_module

__all__ = ["load", "parse_options", "seeded"]

_FACTORY = re.compile(r"^(?P<file>.+\.py):(?P<fn>[A-Za-z_]\w*)(?P<opts>(,[^,]*)*)$")
_RECORDED = ("seed", "epochs", "accuracy", "dataset", "dtype", "command")  # file metadata kept in spec.source
_STATE_SUFFIXES = {".pth", ".pt", ".bin", ".ckpt", ".torchscript", ".ts", ".jit"}


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run the block with the CPU random generator seeded, leaving the global random state as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _value(text: str) -> Any:
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    if re.fullmatch(r"\d+x\d+", low):
        return tuple(int(v) for v in low.split("x"))
    return text


def parse_options(text: str) -> tuple[str, dict[str, Any]]:
    """`"cnn4,channels=1,size=28x28"` -> `("cnn4", {"channels": 1, "size": (28, 28)})`."""
    head, *parts = text.split(",")
    options: dict[str, Any] = {}
    for part in parts:
        key, eq, value = part.partition("=")
        if not eq or not key.strip():
            raise ModelLoadError(f"model option {part!r} in {text!r} must read KEY=VALUE")
        options[key.strip()] = _value(value.strip())
    return head.strip(), options


def load(model: str | Path | nn.Module | ModelSpec, *, arch: str | None = None, seed: int = 0,
         device: str | torch.device | None = None) -> ModelSpec:
    """Load a model from a model string, file, `nn.Module` or `ModelSpec` -> `ModelSpec`.

    Args:
        model: a model string (see the module docstring), a path, an `nn.Module` (wrapped by `spec_for_module`:
            no normalization, channels and input size found from the module) or a `ModelSpec` (returned as is).
        arch: the architecture model string for a weight file without convscope metadata (e.g.
            `"torchvision:resnet18"`); it overrides the metadata's architecture when both exist.
        seed: seed for random initialization (architectures without weights); the global random state is untouched.
        device: move the module there. A passed-in module or spec is moved only when `device` is given.

    Loaded models (from strings and files) come back in eval mode with their weights on `device` (CPU by default);
    a passed-in module keeps its mode. Raises `ModelLoadError` (or `WeightMismatchError`) with what would work.
    """
    if isinstance(model, ModelSpec):
        spec = model
    elif isinstance(model, nn.Module):
        spec = spec_for_module(model)
    elif isinstance(model, (str, Path)):
        spec = _load_string(str(model), arch=arch, seed=seed)
        spec.module.eval()
    else:
        raise ModelLoadError(f"cannot load a {type(model).__name__} as a model; give a model string, file or "
                             "nn.Module")
    if device is not None:
        spec.module.to(device)
    return spec


def _load_string(text: str, *, arch: str | None, seed: int, pretrained: bool = True) -> ModelSpec:
    """`pretrained=False`: hub models (torchvision, timm) come with their named weights' metadata but random
    weights: the architecture of a weight file."""
    text = text.strip()
    scheme, colon, rest = text.partition(":")
    if arch and colon and scheme in ("torchvision", "timm", "convscope"):
        raise ModelLoadError(f"--arch applies to weight files only; {text!r} already names its architecture")
    if colon and scheme == "torchvision":
        from .hubs import torchvision_spec

        return torchvision_spec(rest, seed=seed, text=text, pretrained=pretrained)
    if colon and scheme == "timm":
        from .hubs import timm_spec

        return timm_spec(rest, seed=seed, text=text, pretrained=pretrained)
    if colon and scheme == "convscope":
        return _builtin(rest, seed=seed, text=text)
    match = _FACTORY.match(text)
    if match:
        return _factory(Path(match["file"]), match["fn"], match["opts"], seed=seed, text=text)
    path = Path(text).expanduser()
    if path.exists() or path.suffix in _STATE_SUFFIXES | {".safetensors"}:
        return _from_file(path, arch=arch, seed=seed)
    hint = ""
    if colon and scheme not in ("torchvision", "timm", "convscope"):
        hint = f" Unknown scheme {scheme!r}.{suggest(scheme, ['torchvision', 'timm', 'convscope'])}"
    else:
        from .hubs import torchvision_names

        close = suggest(text, torchvision_names())
        hint = f" For torchvision, write 'torchvision:{text}'." if text in torchvision_names() else close
    raise ModelLoadError(f"model {text!r} is neither a model string (torchvision:NAME, timm:NAME, convscope:NAME, "
                         f"file.py:fn) nor an existing file.{hint}")


def _builtin(rest: str, *, seed: int, text: str) -> ModelSpec:
    name, options = parse_options(rest)
    entry = get_entry(name)
    if entry.weights is not None:
        if options:
            raise ModelLoadError(f"convscope:{name} is a trained model and takes no options (got {options})")
        spec = _from_file(weights_path(entry), arch=None, seed=seed)
        spec.name = f"convscope:{name}"
        spec.source["model"] = spec.name
        return spec
    channels = int(options.pop("channels", entry.channels))
    num_classes = int(options.pop("num_classes", entry.num_classes))
    size = options.pop("size", options.pop("input_size", entry.input_size))
    size = (size, size) if isinstance(size, int) else tuple(size)
    allowed = entry.factory_options()
    unknown = [k for k in options if k not in allowed]
    if unknown:
        raise ModelLoadError(f"convscope:{name} has no option {unknown[0]!r}; options: channels, num_classes, size"
                             + "".join(f", {a}" for a in allowed))
    assert entry.factory is not None
    try:
        with seeded(seed):
            module = entry.factory(channels=channels, num_classes=num_classes, input_size=size, **options, **{
                k: v for k, v in entry.options.items() if k not in options})
    except (ValueError, TypeError) as error:
        raise ModelLoadError(f"{text!r}: {error}") from None
    same = channels == entry.channels
    mean = entry.mean if same else (0.5,) * channels if entry.mean else None
    std = entry.std if same else (0.5,) * channels if entry.std else None
    names = entry.class_names if entry.class_names and len(entry.class_names) == num_classes else None
    return ModelSpec(module=module, name=text, channels=channels, input_size=tuple(size),  # type: ignore[arg-type]
                     mean=mean, std=std, class_names=names, source={"model": text, "seed": seed, "weights": None})


def _factory(file: Path, fn: str, opts: str, *, seed: int, text: str) -> ModelSpec:
    if not file.is_file():
        raise ModelLoadError(f"factory file {str(file)!r} does not exist")
    _, options = parse_options("f" + opts)
    module_name = f"_convscope_factory_{abs(hash(str(file.resolve())))}"
    loader_spec = importlib.util.spec_from_file_location(module_name, file)
    assert loader_spec is not None and loader_spec.loader is not None
    python_module = importlib.util.module_from_spec(loader_spec)
    sys.modules[module_name] = python_module
    try:
        loader_spec.loader.exec_module(python_module)
    except Exception as error:
        sys.modules.pop(module_name, None)
        raise ModelLoadError(f"factory file {str(file)!r} raised while importing: {type(error).__name__}: "
                             f"{error}") from error
    factory = getattr(python_module, fn, None)
    if not callable(factory):
        names = [n for n in dir(python_module) if callable(getattr(python_module, n)) and not n.startswith("_")]
        raise ModelLoadError(f"{str(file)!r} has no function {fn!r}.{suggest(fn, names)}")
    try:
        with seeded(seed):
            made = factory(**options)
    except Exception as error:
        raise ModelLoadError(f"factory {text!r} raised {type(error).__name__}: {error}") from error
    if isinstance(made, ModelSpec):
        spec = made
    elif isinstance(made, nn.Module):
        spec = spec_for_module(made)
    else:
        raise ModelLoadError(f"factory {text!r} returned a {type(made).__name__}, not an nn.Module or ModelSpec")
    spec.name = text
    spec.source = {**spec.source, "model": text, "seed": seed, "sha256": file_digest(file)}
    return spec


def _spec_from_metadata(module: nn.Module, metadata: dict[str, Any], base: ModelSpec | None, name: str,
                        source: dict[str, Any]) -> ModelSpec:
    """Preprocessing from the file's metadata, else from the architecture's spec, else found from the module."""
    fallback = base or spec_for_module(module, channels=metadata.get("channels"),
                                       input_size=_size(metadata.get("input_size")), name=name)
    channels = int(metadata.get("channels") or fallback.channels)
    size = metadata.get("input_size") or fallback.input_size
    size = (size, size) if isinstance(size, int) else tuple(size)

    def stat(key: str) -> tuple[float, ...] | None:
        value = metadata.get(key, getattr(fallback, key))
        return tuple(float(v) for v in value) if value is not None else None

    try:
        return ModelSpec(module=module, name=name, channels=channels, input_size=size,  # type: ignore[arg-type]
                         mean=stat("mean"), std=stat("std"),
                         resize=metadata.get("resize", fallback.resize if base else None),
                         interpolation=metadata.get("interpolation", fallback.interpolation),
                         class_names=metadata.get("class_names") or fallback.class_names, source=source)
    except ValueError as error:
        raise ModelLoadError(f"{name!r}: inconsistent preprocessing metadata ({error})") from None


def _from_file(path: Path, *, arch: str | None, seed: int) -> ModelSpec:
    if not path.exists():
        raise ModelLoadError(f"model file {str(path)!r} does not exist")
    if path.is_dir():
        raise ModelLoadError(f"{str(path)!r} is a folder; give a model file or a model string")
    if path.stat().st_size == 0:
        raise ModelLoadError(f"model file {str(path)!r} is empty (0 bytes)")
    source = {"model": str(path), "sha256": file_digest(path)}
    metadata: dict[str, Any] = {}
    if path.suffix == ".safetensors":
        state, metadata = read_safetensors(path)
    elif is_torchscript(path):
        if arch:
            raise ModelLoadError(f"{str(path)!r} is a TorchScript file, which holds its own architecture; drop --arch")
        module, metadata = load_torchscript(path)
        found = spec_for_module(module, channels=metadata.get("channels"),
                                input_size=_size(metadata.get("input_size")), name=str(path))
        notes = [found.source["assumed"]] if "assumed" in found.source else []
        if "mean" not in metadata:
            notes.append(f"{str(path)!r} carries no preprocessing (no convscope.json): inputs are [0, 1] pixels, "
                         "not normalized")
        extra = {"input": found.source["input"], **({"assumed": "; ".join(notes)} if notes else {})}
        return _spec_from_metadata(module, metadata, found, str(path), {**source, "format": "torchscript", **extra})
    else:
        state = read_state_dict(path)
    architecture = arch or metadata.get("arch")
    if not architecture:
        raise ModelLoadError(f"{str(path)!r} holds only weights; say which architecture they belong to with "
                             "--arch MODELSTRING (e.g. --arch torchvision:resnet18)")
    base = _load_string(architecture, arch=None, seed=seed, pretrained=False)  # the file brings the weights
    base.module.eval()
    load_weights_into(base.module, state, source=str(path), arch=architecture)
    recorded = {k: metadata[k] for k in _RECORDED if k in metadata}
    described = {k: base.source[k] for k in ("preprocessing", "input") if k in base.source}
    if "assumed" in base.source and not {"mean", "input_size"} <= set(metadata):
        described["assumed"] = f"{path.name}: {base.source['assumed']}"
    return _spec_from_metadata(base.module, metadata, base, str(path),
                               {**source, "arch": architecture, **described, **recorded})


def _size(value: Any) -> tuple[int, int] | None:
    """An `input_size` from metadata (an int, [H, W] or [C, H, W]) -> (H, W), or None."""
    if value is None:
        return None
    if isinstance(value, int):
        return value, value
    return int(value[-2]), int(value[-1])
