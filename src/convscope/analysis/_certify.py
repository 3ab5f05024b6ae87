"""bf16 scans made exact: candidates found in bfloat16, re-scored in float32, and a check that nothing was missed.

The bf16 pass keeps, per unit, the `plan.candidates` (> k) inputs with the highest bfloat16 response, and `floor`,
the highest response it dropped. Chosen inputs are then re-scored in float32 (`_rescore`: the very bits a float32
scan computes) and each unit is certified:

    t  = the k-th float32 value among the re-scored inputs (the would-be top-k's last),
    e  = the largest |float32 - bfloat16| difference seen on this unit's re-scored inputs,
    d  = max(2 e, RHO * |t|)            the error bound assumed for the inputs never re-scored,
    b  = the highest bfloat16 response among inputs not re-scored (dropped ones included),
    certified when b + d < t: no input left out can reach the top-k (nor tie with it).

RHO = 2^-5 is eight times bfloat16's unit roundoff u = 2^-8: a first layer's error is at most about
u (2 sum|w x| + |y|), within RHO |y| while sum|w x| <= 3.5 |y| (little cancellation, as at a unit's top responses);
the 2 e term covers deeper layers, whose errors compound, measured on the inputs that matter (the highest
responses). It is a bound the data confirms, not a proof for every network. A layer that reads the model input
directly (a first convolution) gets a proven margin instead, d = max(2 e, u |t| + (1 + u) A) (`_bound`: A from its
weights and the largest input; fashion-cnn's conv1: 0.014 |t| instead of 0.031 |t|); wherever RHO appears below,
such a layer uses it.

The steps, cheapest first:
1. Bands: a unit whose band [t - d, inf) clearly holds more inputs than its candidates (many inputs within
   bf16's resolution of its k-th value: early layers on images with saturated pixels, ReLU6's 6) gets every input
   within 2 RHO |t16| of its k-th value (the proven margin's twice on a first layer, where that is wider). The bf16
   pass itself keeps these bands (`CandidateCollector`: pairs above the threshold of the running k-th value,
   pruned as it rises; a layer beyond its share of `BAND_LIMIT` pairs stops keeping one), so a band pass up to the
   unit's layer runs only where the kept band does not reach down far enough. A layer whose band holds more
   than half the inputs, or the fullest units beyond `BAND_LIMIT` pairs, are given up (step 5).
2. Round one: every candidate within 1.25 RHO |t16| of the k-th bf16 value, and each unit's three best bf16 inputs (the
   probe). The probe measures how far bf16 is from float32 on each layer: a layer whose median unit has
   2 e > |t| / 12 would need a band holding much of the dataset; it and every layer before it go to one float32
   pass (step 5). (The probe used to be a round of its own, before the band pass: one more round of re-scoring,
   saved on every layer that is not hopeless, at the price of a band pass and round one spent in vain on one
   that is.)
3. Rounds: whatever the certificate still asks for.
4. Units still open because dropped inputs may lie in their band: one more band pass at twice the float32 margin
   (twice at most), and rounds again.
5. Whatever is left open runs in one float32 pass up to the deepest such layer, for every unit of the layers it
   runs through (exact by construction; with every layer, the statistics come from it too and are exact).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import replace
from typing import Any

import torch

from ._bound import proven_margin, relative_margin
from ._collect import EMPTY_KEY, Collector, LayerBatch, Plan, State, sort_keys
from ._bands import collect_bands
from ._rescore import Rows, RunnerFactory, Table, rescore

__all__ = ["certify", "pilot", "RHO", "HOPELESS", "PILOT_LIMIT", "BAND_LIMIT"]

RHO = 2.0 ** -5
FIRST_ROUND = 1.25
"""Round one re-scores candidates within FIRST_ROUND * RHO |t16| of the k-th bf16 value. The certificate's own
threshold is t32 - max(2 e, RHO |t32|), a little lower where t32 < t16: with 1.0, fashion-cnn's conv1, conv2 asked
for 15 more pairs after round one, a second round of one batch of 256 images; with 1.25 round one re-scores the same
2,054 images and there is no second round (1.5: 2,310 images)."""
BAND = 2.0  # a band pass collects inputs within BAND * RHO |t16| of it
PROBE = 3  # inputs per unit re-scored first, to measure each layer's bf16 error
HOPELESS = 1 / 12
"""A layer whose median unit's 2 e / |t| exceeds this runs in float32: its band would hold much of the dataset
(MobileNetV2's features.10 measures 0.06 and needs 40% of 3,400 photos re-scored, features.14 0.11 and 96%)."""
PILOT_LIMIT = 1 / 32
"""The pilot (64 inputs spread over the dataset, before any bf16 pass) declines bf16 where the deepest layer's
2 e / |t| exceeds this. Measured on this project's models: fashion-cnn 0.004-0.007 (bf16 pays), MobileNetV2
features.4 0.036-0.046, features.10 0.075, features.14 0.125 (exact bf16 scans there ran slower than float32)."""
BAND_LIMIT = 1 << 20
"""Most (unit, input) pairs a band pass keeps (about 40 MB); the units with the most pairs beyond it fall back."""


def _kth(values: torch.Tensor, valid: torch.Tensor, k: int) -> torch.Tensor:
    """(U,) the k-th largest valid value per row (-inf where fewer than k)."""
    masked = torch.where(valid, values, torch.full_like(values, float("-inf")))
    if masked.shape[1] < k:
        return torch.full(masked.shape[:1], float("-inf"))
    return masked.topk(k, dim=1).values[:, -1]


def _margin(t: torch.Tensor, scale: float, bound: torch.Tensor | None = None) -> torch.Tensor:
    """scale x the margin assumed for inputs never re-scored: RHO |t|, or the proven one where `bound` (a layer
    reading the model input, see `_bound`) is known."""
    if bound is not None:
        return scale * proven_margin(t, bound)
    return relative_margin(t, scale * RHO)


class _Scores(Collector):
    """Every chosen unit's score on each input of a short run (a pilot)."""

    name = "scores"

    def empty(self, plan: Plan) -> State:
        return {lp.name: [] for lp in plan.layers}

    def merge(self, a: State, b: State) -> State:
        return a

    def update(self, state: State, batch: LayerBatch) -> None:
        state[batch.plan.name].append(batch.score.cpu())


def pilot(runner: Callable[[str], AbstractContextManager[Any]], items: Sequence[int]) -> dict[str, float]:
    """Per layer, how far bf16 is from float32 on the first inputs: the median over units of 2 e / |t|, with t the
    unit's best float32 score among `items` and e the largest difference on the inputs whose bf16 score reaches
    half its best (the responses a band is made of). `runner(precision)` gives a `ShardRunner` context with a
    `_Scores` collector."""
    got = {}
    for precision in ("float32", "bf16"):
        with runner(precision) as run:
            got[precision] = {name: torch.cat(parts) for name, parts in run.run_items(items)["states"]["scores"].items()}
    ratios = {}
    for name, s32 in got["float32"].items():
        s16 = got["bf16"][name]
        high = s16 >= 0.5 * s16.amax(0)
        e = torch.where(high, (s32 - s16).abs(), torch.zeros_like(s32)).amax(0)
        t = s32.amax(0).abs()
        ratios[name] = float(torch.where(t > 0, 2 * e / t, torch.zeros_like(t)).median())
    return ratios


def _check(r: Rows, k: int, bound: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(certified (U,), slots to re-score next (U, M), band threshold t - d (U,)) for one layer's rows."""
    found, s32, s16 = r.found, r.s32, r.s16
    valid = r.valid
    t32 = _kth(s32, found, k)
    filled = t32 > float("-inf")
    diff = torch.where(found, (s32 - s16).abs(), torch.zeros_like(s16))
    delta = torch.maximum(2 * diff.amax(1), _margin(t32, 1.0, bound))
    bound = torch.maximum(torch.where(valid & ~found, s16, torch.full_like(s16, float("-inf"))).amax(1), r.floor)
    certified = (bound == float("-inf")) | (filled & (bound + delta < t32))
    threshold = torch.where(filled, t32 - delta, torch.full_like(t32, float("-inf")))
    extra = valid & ~found & (s16 >= threshold[:, None]) & ~certified[:, None]
    return certified, extra, threshold


def _found_keys(r: Rows) -> torch.Tensor:
    """(U, M) sort keys of the re-scored slots by their float32 score (`EMPTY_KEY` for the others)."""
    scores = torch.where(r.found, r.s32, torch.zeros_like(r.s32))
    return torch.where(r.found, sort_keys(scores, r.indices), torch.full_like(r.indices, EMPTY_KEY))


def _exact_topk(r: Rows, k: int) -> dict[str, torch.Tensor]:
    """The top-k state (as `TopKCollector` keeps it) of the re-scored slots of one layer's rows."""
    indices = torch.where(r.found, r.indices, torch.full_like(r.indices, -1))
    keys = _found_keys(r)
    if keys.shape[1] < k:
        pad = k - keys.shape[1]
        keys = torch.cat([keys, torch.full((keys.shape[0], pad), EMPTY_KEY, dtype=torch.int64)], 1)
    top, where = keys.topk(k, dim=1)
    where = where.clamp(max=r.indices.shape[1] - 1)
    empty = top == EMPTY_KEY
    out = {"keys": top}
    fields = {"values": r.s32, "indices": indices, "labels": r.labels, "rows": r.rows, "cols": r.cols,
              "batch_sizes": r.sizes}
    for key, value in fields.items():
        picked = value.gather(1, where)
        fill = float("-inf") if key == "values" else -1
        out[key] = torch.where(empty, torch.full_like(picked, fill), picked)
    out["floor"] = torch.full((r.indices.shape[0],), float("-inf"))
    return out


def certify(runner_factory: RunnerFactory, bf16_pass: Callable[[Plan, Collector], None],
            fallback: Callable[[Plan], State], plan: Plan, candidates: State, k: int,
            bounds: dict[str, torch.Tensor] | None = None) -> tuple[State, State | None, dict[str, Any]]:
    """Exact top-k states (per layer, (U, k) tensors as `TopKCollector` keeps them) from a bf16 candidate state.

    `runner_factory` gives float32 runners for `rescore`; `bf16_pass(plan, collector)` runs the bf16 network over
    the scanned items for a sub-plan's layers with one collector; `fallback(plan)` runs a float32 scan of a
    sub-plan and returns its merged states ({"topk": ..., "stats": ...}). `bounds`: per layer reading the model
    input, its proven error term A (U,) (`_bound.input_bounds`), which replaces the assumed margin. Returns
    (top-k state, float32 statistics state when the fallback covered every layer, else None, report)."""
    rows = {name: Rows.make(c["indices"], c["values"], c["batch_sizes"], c["labels"], c["floor"])
            for name, c in candidates.items()}
    names = [lp.name for lp in plan.layers]
    table = Table(plan.layers)
    report: dict[str, Any] = {"rescored_images": set(), "rescore_rounds": 0, "rescore_batches": 0, "rescore_padding": 0,
                              "band_passes": 0, "band_units": {}, "band_units_in_pass": {}, "band_pairs": 0,
                              "error_ratio": {}}
    given_up = {name: torch.zeros(r.indices.shape[0], dtype=torch.bool) for name, r in rows.items()}
    # Probe: each unit's three best bf16 inputs in float32 measure how far bf16 is from float32 on each layer.
    # Where the median unit's error bound reaches 1/12 of its k-th value, its band would hold most of the dataset:
    # that layer and every layer before it are computed by one float32 pass instead (exact by construction).
    # The probe is re-scored with round one (which holds every unit's top-k anyway): one round less.
    bounds = bounds or {}
    _first_round(runner_factory, bf16_pass, plan, rows, table, given_up, report, k, bounds, candidates)
    depth = -1  # layers[:depth + 1] go to the float32 pass
    for i, (name, r) in enumerate(rows.items()):
        t16 = _kth(r.s16, r.valid, k).abs()
        probe = _best_slots(r, PROBE) & r.found
        diff = torch.where(probe, (r.s32 - r.s16).abs(), torch.zeros_like(r.s16)).amax(1)
        ratio = float(torch.where(t16 > 0, 2 * diff / t16, torch.zeros_like(t16)).median())
        report["error_ratio"][name] = round(ratio, 4)
        if name in bounds:  # the proven margin d / |t| (median over units), in place of RHO
            margin = proven_margin(t16, bounds[name]) / t16.clamp(min=1e-30)
            report.setdefault("proven_margin", {})[name] = round(float(margin.median()), 4)
        if ratio > HOPELESS:
            depth = i
    rest = {name: rows[name] for name in names[depth + 1:]}
    certified = {name: torch.ones(rows[name].indices.shape[0], dtype=torch.bool) for name in names[depth + 1:]}
    if rest:
        certified = _certify_rows(runner_factory, bf16_pass, plan, rest, table, given_up, report, k, bounds,
                                  candidates)
    # Positions (row, col) for the final top-k entries whose pair was never asked for.
    final = {name: _topk_slots(r, k) for name, r in rest.items()}
    _record(report, rescore(runner_factory, plan.layers, rest, table, final, positions=True))
    state = {name: _exact_topk(r, k) for name, r in rest.items()}
    for name, ok in certified.items():
        if not bool((ok & ~given_up[name]).all()):
            depth = max(depth, names.index(name))
    stats = None
    report["float32_layers"] = names[:depth + 1]
    if depth >= 0:  # one float32 pass up to the deepest open layer, for every unit of the layers it runs through
        whole = depth == len(names) - 1
        sub = replace(plan, layers=plan.layers[:depth + 1], candidates=0, precision="float32",
                      stats=plan.stats and whole, topk=True)
        exact = fallback(sub)
        state.update(exact["topk"])
        stats = exact.get("stats") if whole else None
    report.update({"rescored_images": len(report["rescored_images"]),
                   "units": sum(len(lp.channels) for lp in plan.layers), "rho": RHO})
    return {name: state[name] for name in names}, stats, report


def _first_round(runner_factory: RunnerFactory, bf16_pass: Callable[[Plan, Collector], None], plan: Plan,
                 rows: dict[str, Rows], table: Table, given_up: dict[str, torch.Tensor], report: dict[str, Any],
                 k: int, bounds: dict[str, torch.Tensor], kept: State) -> None:
    """Band passes for the units whose band clearly outgrew their candidates, then round one: every unit's bf16
    top-k and everything near its k-th value, and its `PROBE` best, re-scored in float32 (rows in place)."""
    wide = {}
    for name, r in rows.items():
        t16 = _kth(r.s16, r.valid, k)
        # The trigger keeps the assumed margin even where a proven (narrower) one is known: a unit whose dropped
        # inputs come that close has ties or near-ties a band resolves in one pass, and the band itself is cut at
        # the proven margin.
        near = (r.floor > float("-inf")) & (t16 > float("-inf")) & (r.floor >= t16 - _margin(t16, FIRST_ROUND))
        wide[name] = torch.where(near, t16 - _margin(t16, BAND, bounds.get(name)), torch.full_like(t16, float("inf")))
    collect_bands(bf16_pass, plan, rows, table, wide, given_up, report, kept, k, BAND * RHO, BAND_LIMIT)
    requests = {}
    for name, r in rows.items():  # round one: the bf16 top-k and everything near its k-th value
        t16 = _kth(r.s16, r.valid, k)
        requests[name] = (r.valid & (r.s16 >= (t16 - _margin(t16, FIRST_ROUND, bounds.get(name)))[:, None])
                          | _best_slots(r, PROBE))
    _record(report, rescore(runner_factory, plan.layers, rows, table, requests, k=k))


def _best_slots(r: Rows, count: int) -> torch.Tensor:
    """(U, M) mask of each unit's `count` best valid slots by bf16 score."""
    masked = torch.where(r.valid, r.s16, torch.full_like(r.s16, float("-inf")))
    where = masked.topk(min(count, masked.shape[1]), dim=1).indices
    mask = torch.zeros_like(r.valid)
    mask.scatter_(1, where, True)
    return mask & r.valid


def _certify_rows(runner_factory: RunnerFactory, bf16_pass: Callable[[Plan, Collector], None], plan: Plan,
                  rows: dict[str, Rows], table: Table, given_up: dict[str, torch.Tensor], report: dict[str, Any],
                  k: int, bounds: dict[str, torch.Tensor], kept: State) -> dict[str, torch.Tensor]:
    """Re-score rounds and band passes after round one until every unit of `rows` is certified or given up (in
    place); returns the certified units per layer."""
    requests: dict[str, torch.Tensor] = {}
    for attempt in range(3):
        certified = _rounds(runner_factory, plan, rows, table, requests, k, report, bounds)
        if attempt == 2:
            break
        # Units still open because inputs left out of their rows may lie in their band: one more band pass each,
        # at twice the margin the float32 values now give.
        wide, requests = {}, {}
        for name, r in rows.items():
            _, _, threshold = _check(r, k, bounds.get(name))
            t32 = _kth(r.s32, r.found, k)
            open_ = ~certified[name] & ~given_up[name] & (r.floor >= threshold) & (t32 > float("-inf"))
            if bool(open_.any()):
                wide[name] = torch.where(open_, t32 - BAND * (t32 - threshold), torch.full_like(t32, float("inf")))
        if not wide:
            break
        collect_bands(bf16_pass, plan, rows, table, wide, given_up, report, kept, k, BAND * RHO, BAND_LIMIT)
        for name in wide:
            r = rows[name]
            requests[name] = r.valid & ((r.s16 >= wide[name][:, None]) & (wide[name] < float("inf"))[:, None])
    return certified


def _record(report: dict[str, Any], done: dict[str, Any]) -> None:
    if done["images"]:
        report["rescore_rounds"] += 1
        report["rescored_images"] |= done["images"]
        report["rescore_batches"] += done["batches"]
        report["rescore_padding"] += done["padding"]


def _topk_slots(r: Rows, k: int) -> torch.Tensor:
    """(U, M) mask of the slots of each unit's top-k among its re-scored inputs."""
    keys = _found_keys(r)
    top, where = keys.topk(min(k, keys.shape[1]), dim=1)
    mask = torch.zeros_like(r.found)
    mask.scatter_(1, where, top != EMPTY_KEY)
    return mask


def _rounds(runner_factory: RunnerFactory, plan: Plan, rows: dict[str, Rows], table: Table,
            requests: dict[str, torch.Tensor], k: int, report: dict[str, Any], bounds: dict[str, torch.Tensor]
            ) -> dict[str, torch.Tensor]:
    """Re-score the requests, then whatever the certificate asks for, until it asks for nothing new.
    Returns each layer's certified units."""
    while True:
        _record(report, rescore(runner_factory, plan.layers, rows, table, requests, k=k))
        requests, certified = {}, {}
        for name, r in rows.items():
            ok, extra, _ = _check(r, k, bounds.get(name))
            certified[name] = ok
            if bool(extra.any()):
                requests[name] = extra
        if not requests:
            return certified
