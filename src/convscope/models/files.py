"""Weight files: safetensors (with convscope metadata), state-dict pickles read with `weights_only=True`, and
TorchScript archives. Nothing here unpickles arbitrary objects.

convscope's own `.safetensors` files carry string metadata (JSON for structured values): `arch` (a model string
that builds the architecture), `channels`, `input_size`, `resize`, `mean`, `std`, `class_names`, and how the file
was made (`seed`, `epochs`, `accuracy`, `command`, `dataset`, `versions`).
"""

from __future__ import annotations

import hashlib
import json
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ModelLoadError, WeightMismatchError

__all__ = ["read_safetensors", "read_state_dict", "is_torchscript", "load_torchscript", "save_safetensors",
           "load_weights_into", "file_digest", "SPEC_KEYS"]

SPEC_KEYS = ("arch", "channels", "input_size", "resize", "mean", "std", "class_names")
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module", "net", "state_dict_ema")


def file_digest(path: Path) -> str:
    """First 16 hex digits of the file's SHA-256, recorded in recipes."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def _check_file(path: Path) -> None:
    if not path.exists():
        raise ModelLoadError(f"weight file {str(path)!r} does not exist")
    if path.is_dir():
        raise ModelLoadError(f"{str(path)!r} is a folder, not a weight file")
    if path.stat().st_size == 0:
        raise ModelLoadError(f"weight file {str(path)!r} is empty (0 bytes)")


def read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A `.safetensors` file -> (tensors, metadata with JSON values decoded where they parse)."""
    from safetensors import SafetensorError, safe_open

    _check_file(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            raw = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except (SafetensorError, OSError, ValueError) as error:
        raise ModelLoadError(f"weight file {str(path)!r} is not a readable safetensors file (corrupt or "
                             f"truncated?): {error}") from None
    metadata: dict[str, Any] = {}
    for key, value in raw.items():
        try:
            metadata[key] = json.loads(value)
        except (json.JSONDecodeError, TypeError):
            metadata[key] = value
    if "arch" in metadata and not isinstance(metadata["arch"], str):
        raise ModelLoadError(f"weight file {str(path)!r}: metadata 'arch' must be a model string")
    return tensors, metadata


def is_torchscript(path: Path) -> bool:
    """A TorchScript archive is a zip holding `code/` (a `torch.save` zip holds only `data.pkl` and data)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any("/code/" in name or name.endswith("constants.pkl") for name in archive.namelist())


def load_torchscript(path: Path) -> tuple[nn.Module, dict[str, Any]]:
    """A TorchScript file -> (module, metadata from an optional `convscope.json` extra file)."""
    extra = {"convscope.json": ""}
    try:
        module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except (RuntimeError, OSError, ValueError) as error:
        raise ModelLoadError(f"TorchScript file {str(path)!r} cannot be loaded (corrupt?): {error}") from None
    try:
        metadata = json.loads(extra["convscope.json"]) if extra["convscope.json"] else {}
    except json.JSONDecodeError as error:
        raise ModelLoadError(f"TorchScript file {str(path)!r}: its convscope.json is not JSON ({error})") from None
    return module, metadata


def _unwrap(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return dict(obj)
    if isinstance(obj, Mapping):
        for key in _WRAPPER_KEYS:
            if key in obj and isinstance(obj[key], Mapping):
                return _unwrap(obj[key], path)
    kind = type(obj).__name__
    raise ModelLoadError(f"{str(path)!r} holds a {kind}, not a state dict of tensors (looked for keys "
                         f"{', '.join(_WRAPPER_KEYS)})")


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A `torch.save`d state dict (`.pth`, `.pt`, `.bin`, `.ckpt`), read with `weights_only=True`; a checkpoint
    dict wrapping it under `state_dict`/`model`/... is unwrapped."""
    _check_file(path)
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise ModelLoadError(
            f"{str(path)!r} holds Python objects besides tensors, and convscope never runs arbitrary pickles "
            f"(weights_only=True). Save `model.state_dict()` or a .safetensors file instead. ({first})"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as error:
        raise ModelLoadError(f"weight file {str(path)!r} is corrupt or truncated ({error})") from None
    return _unwrap(obj, path)


def _strip_prefix(state: dict[str, torch.Tensor], wanted: set[str]) -> dict[str, torch.Tensor]:
    """Drop a wrapper prefix (`module.` from DataParallel, `_orig_mod.` from torch.compile) if that makes keys fit."""
    for prefix in ("module.", "_orig_mod.", "model."):
        if state and all(k.startswith(prefix) for k in state) and not any(k.startswith(prefix) for k in wanted):
            return {k[len(prefix):]: v for k, v in state.items()}
    return state


def _listing(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def load_weights_into(module: nn.Module, state: dict[str, torch.Tensor], *, source: str, arch: str) -> None:
    """Load `state` into `module` strictly; any missing/unexpected key or shape mismatch raises
    `WeightMismatchError` listing them all."""
    own = module.state_dict()
    state = _strip_prefix(state, set(own))
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys: {_listing(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_listing(unexpected)}")
        if shapes:
            parts.append(f"shape mismatches: {_listing(shapes, 5)}")
        raise WeightMismatchError(f"weights {source!r} do not fit architecture {arch!r}: " + "; ".join(parts))
    with torch.no_grad():
        module.load_state_dict(state, strict=True)


def save_safetensors(module: nn.Module | Mapping[str, torch.Tensor], path: str | Path, metadata: Mapping[str, Any],
                     *, dtype: torch.dtype | None = None) -> Path:
    """Write a module's state dict (or a tensor dict) as safetensors with metadata (non-strings stored as JSON).

    `dtype=torch.float16` halves the file; floating tensors are converted, integer buffers kept.
    """
    from safetensors.torch import save

    state = module.state_dict() if isinstance(module, nn.Module) else dict(module)
    tensors = {}
    for key, value in state.items():
        value = value.detach().cpu()
        if dtype is not None and value.is_floating_point():
            value = value.to(dtype)
        tensors[key] = value.contiguous()
    strings = {k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(save(tensors, metadata=strings))  # (save_file would create the file private, mode 0600)
    tmp.replace(path)  # atomic: a killed run never leaves a half-written model file
    return path
