"""What every convscope result shares: the recipe that made it, inline display, saving.

Results are frozen dataclasses holding tensors plus a `Recipe`; drawing them is `render`'s job. A result class
implements `to_image()` (a PIL image, the default picture) and inherits `_repr_png_` (Jupyter), `save()` and a short
`repr` (`ResultRepr`: kind, shape, target, model; never the tensors' values).
"""

from __future__ import annotations

import io
import json
import dataclasses
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Recipe", "ResultMixin", "ResultRepr", "versions"]


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


_RECIPE_KEYS = ("target", "layer", "unit")  # recipe params worth a glance, after the result's own fields
_LONGEST = 60


def _short(value: Any) -> str | None:
    """A few characters for one field's value, or None to leave the field out."""
    import torch

    if isinstance(value, torch.Tensor):
        return str(tuple(value.shape))
    if isinstance(value, bool) or value is None:
        return None if value is None else repr(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (int, str, Path)):
        text = repr(value if not isinstance(value, Path) else str(value))
        return text if len(text) <= _LONGEST else text[:_LONGEST - 4] + "...'"
    name = getattr(value, "name", None)  # a ModelSpec
    return repr(name) if isinstance(name, str) else None


def summary(result: Any) -> str:
    """`Attribution(method='guided', attributions=(1, 3, 224, 224), target='tabby', model='torchvision:...')`:
    the result's plain fields (strings and numbers), the shape of its first tensor, and from the recipe the target,
    layer or unit and the model. Tensors are never printed."""
    import torch

    names: list[str] = []  # string fields first: they say what the result is
    parts: list[str] = []
    tensor_shown = False
    own = set()
    for f in dataclasses.fields(result) if dataclasses.is_dataclass(result) else ():
        own.add(f.name)
        value = getattr(result, f.name, None)
        if f.name == "recipe" or not f.repr or (isinstance(value, torch.Tensor) and tensor_shown):
            continue
        text = _short(value)
        if text is not None:
            (names if isinstance(value, str) else parts).append(f"{f.name}={text}")
            tensor_shown = tensor_shown or isinstance(value, torch.Tensor)
    parts = names + parts
    recipe = getattr(result, "recipe", None)
    if isinstance(recipe, Recipe):
        for key in _RECIPE_KEYS:
            text = _short(recipe.params.get(key)) if key not in own else None
            if text is not None:
                parts.append(f"{key}={text}")
        model = recipe.model.get("name") or recipe.model.get("model")
        if model is not None and "model" not in own:
            parts.append(f"model={_short(str(model))}")
    return f"{type(result).__name__}({', '.join(parts)})"


class ResultRepr:
    """A short `repr` for a result dataclass (see `summary`) instead of the dataclass's dump of every tensor.

    `@dataclass` writes its own `__repr__` into a class unless the class body already defines one, and it runs
    after `__init_subclass__`: putting `summary` into each subclass's namespace here keeps it, without asking
    every result class for `repr=False`. A subclass that defines `__repr__` itself keeps its own.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__repr__" not in cls.__dict__:
            cls.__repr__ = summary  # type: ignore[method-assign]

    def __repr__(self) -> str:
        return summary(self)


class ResultMixin(ResultRepr):
    """Gives a result with `to_image()` and a `recipe` its Jupyter display, `save()` and short `repr`."""

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
