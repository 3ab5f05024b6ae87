"""`build`: make or finish an atlas - plan it once, then run every registered stage on what is still missing.

    from convscope import atlas
    atlas.build(atlas.BuildConfig("convscope:fashion-cnn", data="fashion-mnist", units="all"), "atlas/fashion")

The plan (first run only, one transaction): the model row, the layer table (`convscope.list_layers`: types, shapes,
receptive fields), and the units the atlas covers, each in a fixed render chunk. Then each stage stores its results
one by one. Run again with the same options, a build that was interrupted (Ctrl-C) or killed continues where it
stopped and ends with the same atlas (`Atlas.content()` and image bytes) as an uninterrupted one; other options
are refused, since they would mix two different atlases in one folder.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..errors import LayerNotFoundError, OptionError, suggest
from ..results import Recipe, versions
from . import _builtin  # noqa: F401, I001  (registers the built-in stages: these first)
from . import _analysis  # noqa: F401, E402, I001  (then the dataset scan, which reads the visualizations' values)
from . import _embedding  # noqa: F401, E402, I001  (then predictions, the t-SNE grid and the probes)
from ._analysis import CHECKPOINT as SCAN_CHECKPOINT
from ._schema import FILES
from .stages import STAGES, Stage, StageContext
from .store import TEMP_MARK, Atlas, AtlasError, now

__all__ = ["BuildConfig", "BuildReport", "build", "Progress"]

# progress(done, total, what): done may be fractional while a batch of units renders
Progress = Callable[[float, int, str], None]

# options that change what is stored: an atlas is resumed only with the same values
_RESULT_OPTIONS = ("model", "arch", "data", "layers", "units", "checkpoints", "classes", "steps", "seed", "chunk",
                   "samples", "k", "scan_limit", "probe_limit", "precision")


@dataclass(frozen=True)
class BuildConfig:
    """The options of one atlas.

    Attributes:
        model: model string (`convscope.models.load`); arch: architecture of a bare weight file.
        data: anything `--data` accepts (`convscope.data.resolve`), or None (stages that need data are skipped).
        layers: the layers whose units the atlas covers (`named_modules()` paths); None: every `Conv2d`.
        units: units per layer, the first N channels, or "all".
        checkpoints: model strings or files of the same architecture, in training order, for evolution strips.
        classes: class names or indices for class models; None: all classes of a model with at most 10, else none.
        steps, seed: feature-visualization steps and seed (every render uses them).
        chunk: units per batched render; fixed for the atlas, since a unit's picture depends on its chunk.
        samples: dataset images stored in the atlas (for the live page and the image pages).
        k, scan_limit: top images per unit, and how many dataset items the scan reads (None: all).
        probe_limit: dataset items the linear probes read (a seeded sample; None: all).
        precision: what the renders run in: "auto" (resolved once per layer by `featvis.render`'s own measurement,
            then pinned in the atlas, so a resume in another process renders the same), "float32" or "bf16".
        engine: "local", or "ray": the dataset scan runs as Ray tasks (`analysis.scan(engine="ray")`) and so do the
            render chunks, each one task whose result does not depend on where it runs.
        address: the Ray cluster to join (None: a local Ray, started and stopped by the build); not stored.
        stages: the stage names to run (None: every registered stage that can run).
    """

    model: str
    data: str | None = None
    arch: str | None = None
    layers: tuple[str, ...] | None = None
    units: int | Literal["all"] = 16
    checkpoints: tuple[str, ...] = ()
    classes: tuple[str, ...] | None = None
    steps: int = 256
    seed: int = 0
    chunk: int = 32
    samples: int = 64
    k: int = 9
    scan_limit: int | None = None
    probe_limit: int | None = 2000
    precision: Literal["auto", "float32", "bf16"] = "auto"
    engine: Literal["local", "ray"] = "local"
    address: str | None = None
    stages: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.units != "all" and (not isinstance(self.units, int) or self.units < 1):
            raise OptionError(f"units per layer must be a positive number or 'all', got {self.units!r}")
        for name in ("steps", "chunk", "k"):
            if getattr(self, name) < 1:
                raise OptionError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.samples < 0:
            raise OptionError(f"samples must be >= 0, got {self.samples}")
        if self.engine not in ("local", "ray"):
            raise OptionError(f"engine must be 'local' or 'ray', got {self.engine!r}")
        if self.address and self.engine != "ray":
            raise OptionError("an address is for --engine ray")
        if self.precision not in ("auto", "float32", "bf16"):
            raise OptionError(f"precision must be 'auto', 'float32' or 'bf16', got {self.precision!r}")
        for name in ("scan_limit", "probe_limit"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise OptionError(f"{name} must be >= 1 (or None for all), got {getattr(self, name)}")

    def identity(self) -> dict[str, Any]:
        """The options that decide what is stored (JSON-ready)."""
        found = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in found.items() if k in _RESULT_OPTIONS}


@dataclass(frozen=True)
class BuildReport:
    """What one `build` call did: results stored per stage, stages skipped and why, leftovers cleaned, seconds."""

    folder: Path
    stored: dict[str, int]
    already: dict[str, int]
    skipped: dict[str, str]
    cleaned: tuple[str, ...]
    seconds: float
    notes: tuple[str, ...] = field(default_factory=tuple)

    def summary(self) -> str:
        made = ", ".join(f"{n} {k}" for k, n in self.stored.items() if n) or "nothing new"
        kept = sum(self.already.values())
        return (f"atlas {self.folder}: stored {made}" + (f"; {kept} results were already there" if kept else "")
                + f" ({self.seconds:.1f}s)")


def _clean_temp(folder: Path) -> list[str]:
    """Remove temporary files left by a build that was killed while writing (images, the scan's checkpoint);
    return their paths."""
    files = folder / FILES
    found = sorted(p for p in files.rglob(f"*{TEMP_MARK}*") if p.is_file()) if files.is_dir() else []
    found += sorted(p for p in folder.glob(f".{SCAN_CHECKPOINT}.*.tmp") if p.is_file())
    for path in found:
        path.unlink()
    return [p.relative_to(folder).as_posix() for p in found]


def _check_options(atlas: Atlas, config: BuildConfig) -> None:
    stored = atlas.meta().get("config")
    if stored is None:
        return
    mine = json.loads(json.dumps(config.identity()))
    # an option the atlas does not record is newer than it: the stages it feeds have not run there yet
    differ = [k for k in _RESULT_OPTIONS if k in stored and stored.get(k) != mine.get(k)]
    if differ:
        what = ", ".join(f"{k} {stored.get(k)!r} there vs {mine.get(k)!r} now" for k in differ)
        raise AtlasError(f"atlas {str(atlas.folder)!r} was built with other options ({what}): resume it with the "
                         "same options, or build into a new folder")


def _selected(config: BuildConfig, rows: list[Any]) -> list[Any]:
    by_name = {r.name: r for r in rows}
    if config.layers is None:
        return [r for r in rows if r.type == "Conv2d" and r.calls >= 1 and r.shape]
    picked = []
    for name in config.layers:
        if name not in by_name:
            raise LayerNotFoundError(f"layer {name!r} is not a layer of {config.model!r}.{suggest(name, by_name)}")
        if not by_name[name].shape:
            raise OptionError(f"layer {name!r} has no tensor output to take units from")
        picked.append(by_name[name])
    return sorted(picked, key=rows.index)


def _prepare(atlas: Atlas, ctx: StageContext) -> None:
    """The model row, the layer table and the plan, in one transaction (only when the atlas has none yet)."""
    from ..layers import list_layers

    if atlas.model() is not None:
        return
    config, spec = ctx.config, ctx.spec
    rows = list_layers(spec)
    chosen = {r.name for r in _selected(config, rows)}
    stamp = now()
    load_recipe = Recipe("load", {"source": config.model}, {"arch": config.arch, "seed": config.seed}).to_dict()
    layer_recipe = Recipe("list_layers", spec.describe(), {"input_size": list(spec.input_size),
                                                           "receptive": "auto"}).to_dict()
    with atlas.transaction() as conn:
        atlas.set_meta("config", config.identity())
        atlas.set_meta("created_at", stamp)
        conn.execute("INSERT INTO models VALUES ('model', 0, ?, ?, ?, ?, ?)",
                     (config.model, spec.name, json.dumps(spec.describe(), sort_keys=True, default=str),
                      json.dumps(load_recipe, sort_keys=True), stamp))
        for k, (label, cspec) in enumerate(ctx.checkpoints() if config.checkpoints else []):
            recipe = Recipe("load", {"source": config.checkpoints[k]}, {"arch": config.arch, "seed": config.seed})
            conn.execute("INSERT INTO models VALUES ('checkpoint', ?, ?, ?, ?, ?, ?)",
                         (k, config.checkpoints[k], label, json.dumps(cspec.describe(), sort_keys=True, default=str),
                          json.dumps(recipe.to_dict(), sort_keys=True), stamp))
        for position, row in enumerate(rows):
            rf = row.receptive_field.to_dict() if row.receptive_field is not None else None
            conn.execute("INSERT INTO layers VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                         (row.name, position, row.path, row.type, json.dumps(list(row.shape)) if row.shape else None,
                          row.params, row.calls, json.dumps(rf, sort_keys=True) if rf else None,
                          int(row.name in chosen), json.dumps(layer_recipe, sort_keys=True), stamp))
            if row.name not in chosen:
                continue
            count = row.shape[0]
            units = list(range(count if config.units == "all" else min(count, config.units)))
            plan = json.dumps({"units": config.units, "chunk": config.chunk, "of": count})
            conn.executemany("INSERT INTO units VALUES (?, ?, ?, ?, ?)",
                             [(row.name, u, i // config.chunk, i % config.chunk, plan) for i, u in enumerate(units)])


def _stages(config: BuildConfig) -> list[Stage]:
    names = list(STAGES) if config.stages is None else list(config.stages)
    unknown = [n for n in names if n not in STAGES]
    if unknown:
        raise OptionError(f"unknown build stage {unknown[0]!r}; stages: {', '.join(STAGES)}")
    return [STAGES[n]() for n in names]


def build(config: BuildConfig, out: str | Path, *, device: Any = None, progress: Progress | None = None,
          argv: Sequence[str] | None = None) -> BuildReport:
    """Build the atlas of `config` into folder `out`, or finish it if it exists (same options), and return a report.

    `progress(done, total, stage)` is called as results are stored (and while long renders run). Ctrl-C stops after
    the last stored result; every stored result stays, and the same call resumes.
    """
    from ..models import load
    from ._ray import ray_session

    start = time.perf_counter()
    with Atlas(out, create=True) as atlas, contextlib.ExitStack() as stack:
        _check_options(atlas, config)
        if atlas.model() is not None:
            atlas.set_meta("config", config.identity())  # records options newer than the atlas
        cleaned = _clean_temp(atlas.folder)
        stack.enter_context(ray_session(config))
        spec = load(config.model, arch=config.arch, seed=config.seed, device=device)
        ctx = StageContext(spec=spec, config=config, atlas=atlas, device=device)
        with atlas.transaction() as conn:
            run = conn.execute("INSERT INTO runs (started_at, status, argv, versions) VALUES (?, 'running', ?, ?)",
                               (now(), json.dumps(list(argv if argv is not None else sys.argv)),
                                json.dumps(versions()))).lastrowid
        status = "failed"
        try:
            _prepare(atlas, ctx)
            stages = _stages(config)
            work, skipped, already = [], {}, {}
            for stage in stages:
                reason = stage.available(ctx)
                if reason:
                    skipped[stage.name] = reason
                    continue
                wanted = stage.wanted(ctx)
                todo = stage.todo(ctx)
                already[stage.name] = len(wanted) - len(todo)
                work.append((stage, todo))
            total = sum(len(todo) for _, todo in work)
            done = 0
            stored = {stage.name: 0 for stage, _ in work}
            for stage, todo in work:
                if not todo:
                    continue
                title = stage.title or stage.name
                if progress is not None:
                    ctx.partial = lambda amount, t=title: progress(done + amount, total, t)
                    progress(done, total, title)
                tick = time.perf_counter()
                for output in stage.run(ctx, todo):  # an Output, or a list of them stored together
                    elapsed = time.perf_counter() - tick
                    atlas.put_many(output if isinstance(output, list) else [output], stage.name, seconds=elapsed,
                                   run=run)
                    tick = time.perf_counter()
                    done += 1
                    stored[stage.name] += 1
                    if progress is not None:
                        progress(done, total, title)
            atlas.set_meta("updated_at", now())
            status = "finished"
        except KeyboardInterrupt:
            status = "interrupted"
            raise
        finally:
            atlas.conn.execute("UPDATE runs SET finished_at = ?, status = ? WHERE id = ?", (now(), status, run))
            if status == "finished":
                atlas.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # one self-contained file to copy
    return BuildReport(Path(out), stored, already, skipped, tuple(cleaned), time.perf_counter() - start,
                       tuple(ctx.notes))
