"""`scan`: one streaming pass over a dataset computing, for every chosen unit at once, its top-k inputs and its
activation statistics; locally or on Ray, checkpointed per shard, exact (and still exact in bf16)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from PIL import Image

from ..accel import resolve_precision
from ..data import Dataset, resolve
from ..errors import DatasetError, OptionError
from ..models import ModelSpec, load
from ..results import Recipe, ResultMixin
from ._bound import InputRange, first_layers, input_bounds
from ._codes_state import CodesCollector
from ._collect import By, Collector, LayerPlan, Plan
from ._engine import Accumulator, ShardRunner, Units, resolve_units, run_local, scan_layers
from ._stats import Stats, build_stats
from ._stats_state import StatsCollector
from ._topk import LayerTopK, TopK
from ._topk_state import CandidateCollector, TopKCollector
from .codes import Codes, Pool, resolve_layers

__all__ = ["scan", "topk", "stats", "Scan"]

Engine = Literal["local", "ray"]
Progress = Callable[[int, int], None]


@dataclass(frozen=True, eq=False)
class Scan(ResultMixin):
    """What one pass computed.

    Attributes:
        topk: the top-k result (None with `topk=False`); stats: the statistics (None with `stats=False`).
        items: dataset items visited; skipped: (item, reason) for each unreadable item left out.
        bf16: with precision "bf16", how the top-k was made exact (images re-scored in float32, units recomputed
            by a float32 pass); None in float32.
        recipe: how it was made.
        codes: the pooled codes computed in the same pass (`codes=` of `scan`), else None. They grow with the
            dataset, so `to_dict` leaves them out: save them with `scan.codes.save(path)`.
    """

    topk: TopK | None
    stats: Stats | None
    items: int
    skipped: tuple[tuple[str, str], ...]
    bf16: dict[str, Any] | None
    recipe: Recipe
    codes: Codes | None = None

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"items": self.items, "scanned": self.items - len(self.skipped),
                               "skipped": len(self.skipped), "skipped_items": [list(s) for s in self.skipped]}
        if self.stats is not None:
            out["layers"] = self.stats.summary()
        if self.bf16 is not None:
            out["bf16"] = self.bf16
        if self.codes is not None:
            out["codes"] = {name: int(c.shape[1]) for name, c in self.codes.codes.items()}
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "scan", "items": self.items, "skipped": [list(s) for s in self.skipped], "bf16": self.bf16,
                "recipe": self.recipe.to_dict(), "topk": self.topk.to_dict() if self.topk else None,
                "stats": self.stats.to_dict() if self.stats else None}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Scan":
        return cls(TopK.from_dict(data["topk"]) if data.get("topk") else None,
                   Stats.from_dict(data["stats"]) if data.get("stats") else None, int(data["items"]),
                   tuple(tuple(s) for s in data["skipped"]), data.get("bf16"), Recipe(**data["recipe"]))

    def to_image(self, **kwargs: Any) -> Image.Image:
        if self.topk is not None and self.topk.origin is not None:
            return self.topk.to_image(**kwargs)
        if self.stats is not None:
            return self.stats.to_image()
        raise OptionError("this scan holds nothing to draw")


def _describe_data(data: Any, dataset: Dataset, split: str) -> dict[str, Any]:
    given = str(data) if isinstance(data, (str, Path)) else dataset.name
    return {"data": given, "split": split, "dataset": dataset.name, "dataset_items": len(dataset)}


def _fingerprint(recipe: dict[str, Any]) -> str:
    text = json.dumps({k: v for k, v in recipe.items() if k != "versions"}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _check_options(k: int, by: str, batch_size: int, limit: int | None, engine: str, topk: bool, stats: bool,
                   codes: str | None) -> None:
    if k < 1:
        raise OptionError(f"k must be at least 1, got {k}")
    if by not in ("max", "mean"):
        raise OptionError(f"by {by!r}: choose 'max' (spatial max) or 'mean' (spatial mean)")
    if batch_size < 1:
        raise OptionError(f"batch_size must be at least 1, got {batch_size}")
    if limit is not None and limit < 0:
        raise OptionError(f"limit must be >= 0, got {limit}")
    if engine not in ("local", "ray"):
        raise OptionError(f"engine {engine!r}: choose 'local' or 'ray'")
    if codes is not None and codes not in ("mean", "max"):
        raise OptionError(f"codes {codes!r}: choose 'mean' or 'max' (the pooling over space), or None")
    if not (topk or stats or codes):
        raise OptionError("nothing to compute: topk and stats are both off and no codes asked for")


def scan(model: ModelSpec | Any, data: Any, layers: str | Sequence[str], *, k: int = 9, by: By = "max",
         topk: bool = True, stats: bool = True, units: Units = None, batch_size: int = 64,
         shard_size: int | None = None, limit: int | None = None, split: Literal["train", "test"] = "test",
         precision: Literal["auto", "float32", "bf16"] = "float32", engine: Engine = "local",
         address: str | None = None, workers: int | None = None, checkpoint: str | Path | None = None,
         progress: Progress | None = None, codes: Pool | None = None,
         code_layers: str | Sequence[str] | None = None) -> Scan:
    """One pass over `data` computing each chosen unit's top-k inputs and activation statistics.

    Args:
        model: a `ModelSpec`, `nn.Module` or model string. It is not changed.
        data: anything `convscope.data.resolve` accepts (a name such as "fashion-mnist", an image folder, a `.npz`,
            an IDX file, a torchvision dataset, a `Dataset`); `split` picks train/test for names and IDX folders.
        layers: layer names (`path`, `path#k`), or "all" for the output of every conv and linear layer. The
            forward pass stops after the deepest one.
        k: examples per unit. by: "max" ranks inputs by the unit's spatial max (default), "mean" by its spatial
            mean; the (row, col) recorded is always the first spatial max in row-major order.
        topk, stats: what to compute. units: which channels (see `resolve_units`: None = all; "0-15"; a dict
            {layer: channels}; unit strings ["conv2:5"]).
        batch_size: inputs per forward pass; shard_size: items per shard (the unit of checkpointing and of Ray
            tasks; default about 1024, rounded up to a multiple of batch_size); limit: the first `limit` items.
        precision: "float32" (default), "bf16" (candidates in bfloat16, top-k re-scored in float32: still exact;
            statistics other than max/dead approximate, see `Stats.exact`) or "auto" (bf16 where faster).
        engine: "local" or "ray" (`address` of a cluster, else a local Ray with `workers` CPUs).
        checkpoint: a file; the merged state is written there after every shard, and a run given an existing
            checkpoint of the same scan continues from it (same result as an uninterrupted run).
        progress: called as `progress(items_done, items_total)` as the pass advances.
        codes: "mean" or "max": also keep every visited item's pooled code (as `analysis.codes` computes it, the
            same bits over the same batches) of `code_layers` (default: the scanned layers; names as `codes`
            takes them: a module path, `PATH:input`, `input`, "all"), so t-SNE and probes (`tsne_from_codes`,
            `probe_codes`) share this pass. Codes grow with the dataset ((items, D) float32 per layer); in a bf16
            pass they come from bfloat16 activations (approximate).

    Returns a `Scan` with `topk` (a `TopK`), `stats` (a `Stats`), `codes` (a `Codes` or None), the count and names
    of skipped items. Memory grows with units x k (plus the codes, if asked for), not with the dataset.
    """
    _check_options(k, by, batch_size, limit, engine, topk, stats, codes)
    spec = load(model)
    dataset = resolve(data, split=split)
    resolved = resolve_precision(precision, spec.device, spec.dtype)
    found = scan_layers(spec.module, spec.example_input(), layers)
    plans = resolve_units(units, found)
    items = len(dataset) if limit is None else min(limit, len(dataset))
    shard = shard_size or 1024
    if shard < 1:
        raise OptionError(f"shard_size must be at least 1, got {shard_size}")
    shard = -(-shard // batch_size) * batch_size
    declined = None
    if resolved == "bf16" and topk:
        resolved, declined = _bf16_pilot(spec, dataset, plans, by, batch_size, items)
    candidates = 4 * k + 16 if resolved == "bf16" and topk else 0
    plan = Plan(tuple(plans), k, by, topk, stats, batch_size, shard, items, resolved, candidates)
    params = {**_describe_data(data, dataset, split), **plan.describe(), "limit": limit, "precision_asked": precision}
    code_names: tuple[str, ...] = ()
    if codes is not None:  # only then in the recipe: fingerprints of scans without codes stay as they were
        code_names = tuple(resolve_layers(spec.module, [lp.name for lp in plans] if code_layers is None
                                          else code_layers))
        params["codes"] = {"pool": codes, "layers": list(code_names)}
    if declined is not None:
        params["bf16_declined"] = declined
    recipe = Recipe(kind="scan", model=spec.describe(), params=params)
    collectors: list[Collector] = []
    if topk:
        if candidates:  # with each layer's band kept in the same pass (see `CandidateCollector`)
            from ._certify import BAND, BAND_LIMIT, RHO

            collectors.append(CandidateCollector(candidates, top=k, width=BAND * RHO,
                                                 limit=max(1, BAND_LIMIT // len(plans))))
        else:
            collectors.append(TopKCollector(k))
    if candidates and by == "max":  # a first layer's proven bf16 error bound (`_bound`; a spatial max's, not a
        # mean's, whose bfloat16 sum is rounded once more) needs its input checked on every batch
        firsts = first_layers(spec.module, plans)
        if firsts:
            paths = {lp.name: lp.path for lp in plans}
            collectors.append(InputRange(firsts, [paths[name] for name in firsts]))
    if stats:
        collectors.append(StatsCollector())
    if codes is not None:
        collectors.append(CodesCollector(code_names, codes))
    acc = Accumulator(plan, collectors, _fingerprint(recipe.to_dict()), checkpoint)
    if engine == "ray":
        from ._ray import run_ray

        run_ray(spec, dataset, plan, collectors, acc, address=address, workers=workers, progress=progress)
    else:
        run_local(spec, dataset, plan, collectors, acc, progress)
    result = _finish(spec, dataset, plan, collectors, acc, recipe)
    if declined is not None:
        result = replace(result, bf16={"declined": True, **declined})
    return result


def _bf16_pilot(spec: ModelSpec, dataset: Dataset, plans: Sequence[LayerPlan], by: By, batch_size: int, items: int
                ) -> tuple[Literal["float32", "bf16"], dict[str, Any] | None]:
    """Run 64 inputs spread over the dataset in both precisions; if the deepest layer's bf16 error is too large
    (`_certify.PILOT_LIMIT`), an exact bf16 scan would re-score so much of the dataset in float32 after its bf16
    pass that it runs slower than float32: scan in float32 outright. Returns the precision to use and, when bf16
    is declined, why."""
    from ._certify import PILOT_LIMIT, _Scores, pilot

    count = min(items, 64)
    if count < 4:
        return "bf16", None

    def runner(precision: str) -> ShardRunner:
        size = min(count, batch_size)
        sub = Plan(tuple(plans), 1, by, True, False, size, count, count, precision)  # type: ignore[arg-type]
        return ShardRunner(spec, dataset, sub, [_Scores()])

    ratios = pilot(runner, [i * items // count for i in range(count)])  # spread: datasets are often sorted
    deepest = plans[-1].name
    if ratios[deepest] <= PILOT_LIMIT:
        return "bf16", None
    return "float32", {"reason": f"bf16 error on {deepest!r} is {ratios[deepest]:.3f} of its top values (limit "
                                 f"{PILOT_LIMIT:.3f}): an exact bf16 scan would re-score too many inputs in float32",
                       "error_ratio": {name: round(r, 4) for name, r in ratios.items()}, "pilot_items": count}


def _finish(spec: ModelSpec, dataset: Dataset, plan: Plan, collectors: list[Collector], acc: Accumulator,
            recipe: Recipe) -> Scan:
    channels = {lp.name: lp.channels for lp in plan.layers}
    topk_state = acc.states.get("topk")
    report, exact_stats = None, None
    if "candidates" in acc.states:
        bounds = (input_bounds(spec.module, plan.layers, acc.states.get("inputs", {}), spec.device)
                  if plan.by == "max" else {})
        topk_state, exact_stats, report = _certify_bf16(spec, dataset, plan, acc.states["candidates"], bounds)
    result_topk = None
    if topk_state is not None:
        layers = {name: LayerTopK(name, channels[name], *(topk_state[name][f].clone() for f in
                                                          ("values", "indices", "labels", "rows", "cols")))
                  for name in channels}
        used = sorted({int(i) for t in layers.values() for i in t.indices.flatten().tolist() if i >= 0})
        sources = {i: dataset.item_name(i) for i in used}
        result_topk = TopK(layers, plan.k, plan.by, sources, tuple(dataset.classes) if dataset.classes else None,
                           recipe, origin=(spec, dataset))
    result_stats = None
    if "stats" in acc.states:
        exact: tuple[str, ...] = ("mean", "std", "max", "active", "hist", "dead")
        state = acc.states["stats"]
        if exact_stats is not None:  # the float32 pass that made the top-k exact also ran every layer's statistics
            state = exact_stats
        elif plan.precision == "bf16":
            exact = ()
            if result_topk is not None and plan.by == "max":  # the exact top-1 is the exact max
                exact = ("max", "dead")
                state = {name: {**s, "max": result_topk.layers[name].values[:, 0].clone()} for name, s in state.items()}
        result_stats = build_stats(state, channels, plan.by, exact, recipe)
    skipped = tuple((str(a), str(b)) for a, b in acc.skipped)
    result_codes = _codes(spec, dataset, plan, acc, skipped, recipe) if "codes" in acc.states else None
    return Scan(result_topk, result_stats, plan.items, skipped, report, recipe, result_codes)


def _codes(spec: ModelSpec, dataset: Dataset, plan: Plan, acc: Accumulator, skipped: tuple[tuple[str, str], ...],
           recipe: Recipe) -> Codes:
    """The pass's pooled codes as a `Codes` (items in the order read; unreadable ones left out)."""
    state = acc.states["codes"]
    collector = next(c for c in acc.collectors if c.name == "codes")
    merged = collector.merge(state, {"indices": [], "labels": [], "codes": {n: [] for n in state["codes"]}})
    asked = recipe.params["codes"]
    if not len(merged["indices"]):
        raise DatasetError(f"no readable item among the {plan.items} scanned from {dataset.name}")
    found = merged["indices"]
    params = {"data": dataset.describe(), "split": recipe.params["split"], "layers": asked["layers"],
              "pool": asked["pool"], "first": plan.items, "items": int(found.shape[0]), "precision": plan.precision,
              "pass": "scan"}
    return Codes(codes=dict(merged["codes"]), indices=found, labels=merged["labels"],
                 classes=tuple(dataset.classes), sources=tuple(dataset.item_name(int(i)) for i in found),
                 skipped=skipped, pool=asked["pool"], recipe=Recipe(kind="codes", model=spec.describe(), params=params))


def _certify_bf16(spec: ModelSpec, dataset: Dataset, plan: Plan, candidates: dict[str, Any],
                  bounds: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None, dict[str, Any]]:
    """The exact top-k of a bf16 scan: its candidates re-scored in float32 and certified (see `_certify`)."""
    from ._certify import certify

    def runner_factory(layers: Sequence[LayerPlan], size: int, collector: Collector) -> ShardRunner:
        sub = Plan(tuple(layers), plan.k, plan.by, True, False, size, size, plan.items, "float32")
        return ShardRunner(spec, dataset, sub, [collector])

    def bf16_pass(sub: Plan, collector: Collector) -> None:
        with ShardRunner(spec, dataset, sub, [collector]) as runner:
            for shard in range(sub.shards):  # the same batches as the scan's, no per-item bookkeeping
                runner.run(shard)

    def fallback(sub: Plan) -> dict[str, Any]:
        collectors: list[Collector] = [TopKCollector(plan.k)] + ([StatsCollector()] if sub.stats else [])
        inner = Accumulator(sub, collectors, "fallback", None)
        run_local(spec, dataset, sub, inner.collectors, inner)
        return inner.states

    return certify(runner_factory, bf16_pass, fallback, plan, candidates, plan.k, bounds)


def topk(model: ModelSpec | Any, data: Any, layers: str | Sequence[str], *, k: int = 9, **options: Any) -> TopK:
    """The top-k part of `scan` (statistics off); options as in `scan`."""
    result = scan(model, data, layers, k=k, topk=True, stats=False, **options).topk
    assert result is not None
    return result


def stats(model: ModelSpec | Any, data: Any, layers: str | Sequence[str] = "all", **options: Any) -> Stats:
    """The statistics part of `scan` (top-k off); options as in `scan`."""
    result = scan(model, data, layers, topk=False, stats=True, **options).stats
    assert result is not None
    return result
