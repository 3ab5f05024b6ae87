"""Saving a result's numbers beside its picture, and reading them back: one `.npz` per result.

Arrays go in as they are; everything else (recipe, names, options) as one JSON string under `meta`, so the file
loads with `allow_pickle=False` and other tools (the atlas, a notebook) can read it with numpy alone.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConvscopeError
from ..results import Recipe

__all__ = ["write_npz", "read_npz", "recipe_from_dict", "npz_path"]


def npz_path(path: str | Path) -> Path:
    """The `.npz` that goes with a saved picture (`tsne.png` -> `tsne.npz`); a `.npz` path is returned as is."""
    return Path(path).with_suffix(".npz")


def write_npz(path: str | Path, kind: str, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> Path:
    """Write `arrays` and `meta` (JSON-able, with `kind` added) to `path` atomically (temporary name, then rename)."""
    path = npz_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = json.dumps({"kind": kind, **meta}, sort_keys=True, default=str)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    with open(tmp, "wb") as handle:
        np.savez_compressed(handle, meta=np.array(payload), **arrays)
    tmp.replace(path)
    return path


def read_npz(path: str | Path, kind: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(arrays, meta) from a file `write_npz` wrote for a result of `kind`; a clear error for anything else."""
    path = npz_path(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except FileNotFoundError:
        raise ConvscopeError(f"{str(path)!r} does not exist (a saved {kind} result writes it beside its PNG)") from None
    except (OSError, ValueError, EOFError) as error:
        raise ConvscopeError(f"cannot read {str(path)!r} as a saved {kind} result ({error})") from None
    if "meta" not in arrays:
        raise ConvscopeError(f"{str(path)!r} is not a saved convscope result (no 'meta' entry)")
    meta = json.loads(str(arrays.pop("meta")))
    if meta.get("kind") != kind:
        raise ConvscopeError(f"{str(path)!r} holds a {meta.get('kind')!r} result, not {kind!r}")
    return arrays, meta


def recipe_from_dict(data: dict[str, Any]) -> Recipe:
    return Recipe(kind=data["kind"], model=data["model"], params=data.get("params", {}),
                  versions=data.get("versions", {}))
