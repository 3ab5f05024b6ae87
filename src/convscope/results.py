"""What every convscope result shares: the recipe that made it, inline display, saving.

Results are frozen dataclasses holding tensors plus a `Recipe`; drawing them is `render`'s job. A result class
implements `to_image()` (a PIL image, the default picture) and inherits `_repr_png_` (Jupyter) and `save()`.
"""

from __future__ import annotations

import io
import json
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Recipe", "ResultMixin", "versions"]


def versions() -> dict[str, str]:
    """Library versions that shape a result, recorded in every recipe."""
    import numpy
    import torch

    from . import __version__

    found = {"convscope": __version__, "torch": torch.__version__, "numpy": numpy.__version__,
             "python": platform.python_version()}
    try:
        import torchvision

        found["torchvision"] = torchvision.__version__
    except ImportError:  # pragma: no cover - torchvision is a dependency
        pass
    return found


@dataclass(frozen=True)
class Recipe:
    """How a result was made: enough to make it again.

    `kind` names the operation ("activations", "saliency", "render", ...); `model` is the model string or
    description; `params` holds every option that changes the output (layer, unit, target, seed, steps, ...).
    """

    kind: str
    model: dict[str, Any]
    params: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=versions)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True, default=str)


class ResultMixin:
    """Gives a result with `to_image()` and a `recipe` its Jupyter display and `save()`."""

    recipe: Recipe

    def to_image(self):  # pragma: no cover - every result overrides this
        raise NotImplementedError

    def _repr_png_(self) -> bytes:
        buffer = io.BytesIO()
        self.to_image().save(buffer, format="PNG")
        return buffer.getvalue()

    def save(self, path: str | Path, **kwargs: Any) -> Path:
        """Write the picture to `path` (PNG), with the recipe as a PNG text chunk and beside it as `.json`."""
        from PIL.PngImagePlugin import PngInfo

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        info = PngInfo()
        info.add_text("convscope-recipe", self.recipe.to_json())
        self.to_image(**kwargs).save(path, pnginfo=info)
        path.with_suffix(".json").write_text(self.recipe.to_json())
        return path
