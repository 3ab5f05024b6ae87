"""Build stages: small classes, one per kind of result, in a registry the build runs in order.

A stage names the result kind it writes, its level (per model, per layer, per unit), what it needs ("data",
"checkpoints"), the keys it wants for this atlas, and how to make them. The build asks each stage for its wanted
keys, drops those already stored (that is the resume), and commits every `Output` the stage yields in its own
transaction as it comes. A stage that batches work (a whole chunk of units in one render) must make each key's
result independent of which other keys are missing, so that a resumed build ends identical: the featvis stages
always render a unit's whole fixed chunk (`units.chunk` in the plan) and keep the units still missing.

The dataset-analysis stages (top-k images and patches, purity, statistics and dead units, trust figures, probes,
t-SNE) register here the same way; `convscope.atlas.kinds` fixes the payload each writes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from ..errors import ConvscopeError
from .store import Atlas, Output

if TYPE_CHECKING:
    from ..data import Dataset
    from ..models import ModelSpec
    from .build import BuildConfig

__all__ = ["Stage", "StageContext", "STAGES", "register_stage", "Key"]

Key = tuple[str, int]  # (layer, unit); ('', -1) for a model-level result, ('', i) for per-class or per-image rows
Level = Literal["model", "layer", "unit"]


@dataclass
class StageContext:
    """What a stage may use: the loaded model, the build options, the atlas, and lazily the dataset and checkpoints.

    `partial(amount)` reports progress inside a long piece of work (in units of keys), before its outputs come.
    """

    spec: ModelSpec
    config: BuildConfig
    atlas: Atlas
    device: Any = None
    partial: Callable[[float], None] = lambda amount: None
    _dataset: Any = None
    _checkpoints: list[tuple[str, ModelSpec]] | None = None
    notes: list[str] = field(default_factory=list)
    # (layer, chunk units, precision) -> the model's own `Visualization` of that chunk, kept by the render stage
    # when the model is also one of the checkpoints, so its evolution strips reuse the render (the same bits)
    renders: dict[tuple[str, tuple[int, ...], str], Any] = field(default_factory=dict)

    @property
    def dataset(self) -> Dataset:
        if self._dataset is None:
            from ..data import resolve

            if self.config.data is None:
                raise ConvscopeError("this stage needs a dataset: pass --data")
            self._dataset = resolve(self.config.data, channels=self.spec.channels)
        return self._dataset

    def checkpoints(self) -> list[tuple[str, ModelSpec]]:
        """(label, spec) of each checkpoint, loaded once, in the order given."""
        if self._checkpoints is None:
            from ..featvis.evolution import checkpoint_label
            from ..models import load

            loaded = []
            for source in self.config.checkpoints:
                spec = load(source, arch=self.config.arch, seed=self.config.seed, device=self.device)
                loaded.append((checkpoint_label(source, spec), spec))
            self._checkpoints = loaded
        return self._checkpoints

    def pinned(self, key: str, resolve: Callable[[], Any]) -> Any:
        """A value the atlas fixes the first time it is needed (what precision "auto" resolved to for a layer's
        renders), stored in its meta table (`pinned`) before any result that depends on it, and read back by every
        later build or resume, in whatever process: a choice measured per process never splits an atlas."""
        pins = self.atlas.meta().get("pinned", {})
        if key not in pins:
            pins[key] = resolve()
            self.atlas.set_meta("pinned", pins)
        return pins[key]

    def plan(self) -> dict[str, dict[int, list[int]]]:
        """layer -> chunk -> its units in item order, from the atlas's stored plan."""
        found: dict[str, dict[int, list[tuple[int, int]]]] = {}
        for layer, unit, chunk, item in self.atlas.plan():
            found.setdefault(layer, {}).setdefault(chunk, []).append((item, unit))
        return {layer: {chunk: [unit for _, unit in sorted(items)] for chunk, items in chunks.items()}
                for layer, chunks in found.items()}


class Stage:
    """One kind of result. Subclasses set the class attributes and implement `wanted` and `run`."""

    name: ClassVar[str]
    kind: ClassVar[str]
    level: ClassVar[Level]
    needs: ClassVar[tuple[str, ...]] = ()  # "data", "checkpoints"
    title: ClassVar[str] = ""

    def available(self, ctx: StageContext) -> str | None:
        """None when the stage can run on this atlas, else why not (e.g. "no --checkpoints")."""
        if "data" in self.needs and ctx.config.data is None:
            return "no --data"
        if "checkpoints" in self.needs and not ctx.config.checkpoints:
            return "no --checkpoints"
        return None

    def wanted(self, ctx: StageContext) -> list[Key]:
        """Every key this stage should have stored for this atlas, in the order to make them."""
        raise NotImplementedError

    def todo(self, ctx: StageContext) -> list[Key]:
        done = ctx.atlas.done(self.kind)
        return [key for key in self.wanted(ctx) if key not in done]

    def run(self, ctx: StageContext, todo: list[Key]) -> Iterator[Output | list[Output]]:
        """Yield one `Output` per key of `todo` (any order), or a list of outputs about one key (several kinds) that
        commit together; each is committed as soon as it is yielded."""
        raise NotImplementedError


STAGES: dict[str, type[Stage]] = {}


def register_stage(cls: type[Stage]) -> type[Stage]:
    """Class decorator adding a stage to the registry (in build order); a second stage of the same name is refused."""
    if cls.name in STAGES:
        raise ValueError(f"a build stage named {cls.name!r} is already registered ({STAGES[cls.name].__qualname__})")
    STAGES[cls.name] = cls
    return cls
