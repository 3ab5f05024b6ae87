"""The viewer's pages as data, and the one renderer that turns them into HTML for the server and the export.

Each page function reads the atlas and returns a JSON-ready dict (or None when the page does not exist); the API
returns that dict as is and the HTML page renders it with its template, so both always say the same thing. Image
paths in the dicts are relative to the atlas folder ("files/featvis/conv1/3.png").
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from ..atlas.kinds import KINDS
from ..atlas.store import Atlas, StoredResult
from .graph import graph_svg
from .links import Links

__all__ = ["overview", "layer_page", "unit_page", "tsne_page", "image_page", "live_page", "render_html",
           "UNIT_SECTIONS"]

# the order of a unit page's sections; kinds not listed here follow as generic sections
UNIT_SECTIONS = ("featvis", "trust", "topk", "purity", "stats", "filter", "evolution")


def _picture(result: StoredResult | None, prefer: str = "thumb") -> str | None:
    if result is None:
        return None
    return result.images.get(prefer) or result.images.get("image")


def _model(atlas: Atlas) -> dict[str, Any]:
    model = atlas.model() or {"source": "?", "label": "?", "description": {}}
    meta = atlas.meta()
    return {"source": model["source"], "label": model["label"], "description": model["description"],
            "config": meta.get("config", {}), "schema_version": meta.get("schema_version"),
            "checkpoints": [c["label"] for c in atlas.checkpoints()],
            "has_tsne": atlas.result("tsne") is not None}


def overview(atlas: Atlas) -> dict[str, Any]:
    """The model: its layer table (with units covered, dead units and probe accuracy when stored), class models,
    the dataset sample."""
    layer_stats = {r.layer: r.payload for r in atlas.results("layer_stats", recipes=False)}
    probes = {r.layer: r.payload for r in atlas.results("probe", recipes=False)}
    render_dead: dict[str, int] = {}
    for r in atlas.results("featvis", recipes=False):
        render_dead[r.layer] = render_dead.get(r.layer, 0) + bool(r.payload.get("render_dead"))
    covered: dict[str, int] = {}
    for layer, _unit, _chunk, _item in atlas.plan():
        covered[layer] = covered.get(layer, 0) + 1
    rows = []
    for row in atlas.layers():
        rf = row["receptive_field"] or {}
        stats = layer_stats.get(row["name"])
        rows.append({"name": row["name"], "type": row["type"], "shape": row["shape"], "params": row["params"],
                     "selected": row["selected"], "depth": row["path"].count(".") + 1 if row["path"] else 0,
                     "path": row["path"], "calls": row["calls"], "units": covered.get(row["name"], 0),
                     "rf_size": rf.get("size"), "rf_stride": rf.get("stride"),
                     "dead": len(stats["dead"]) if stats else None, "render_dead": render_dead.get(row["name"]),
                     "probe": probes.get(row["name"], {}).get("accuracy")})
    classes = [{"class": r.unit, "name": r.payload.get("name"), "value": r.payload.get("value"),
                "image": _picture(r)} for r in atlas.results("class_model", recipes=False)]
    chance = next((p.get("chance") for p in probes.values() if p.get("chance") is not None), None)
    return {"page": "overview", "model": _model(atlas), "layers": rows, "class_models": classes,
            "dataset": _dataset(atlas), "probe_chance": chance}


def _dataset(atlas: Atlas) -> list[dict[str, Any]]:
    return [{"index": r.unit, "class": r.payload.get("class"), "label": r.payload.get("label"),
             "image": r.images.get("image"), "error": r.payload.get("error")}
            for r in atlas.results("dataset_image", recipes=False)]


def _neighbours(items: list[Any], current: Any) -> dict[str, Any]:
    if current not in items:
        return {"previous": None, "next": None}
    i = items.index(current)
    return {"previous": items[i - 1] if i > 0 else None, "next": items[i + 1] if i + 1 < len(items) else None}


def layer_page(atlas: Atlas, name: str) -> dict[str, Any] | None:
    """A layer: every covered unit's picture with its numbers (statistics, trust figure, purity when stored)."""
    layer = atlas.layer(name)
    if layer is None:
        return None
    by_kind: dict[str, dict[int, StoredResult]] = {}
    for r in atlas.results(layer=name, recipes=False):
        by_kind.setdefault(r.kind, {})[r.unit] = r
    cells = []
    for unit in atlas.units(name):
        vis, stats = by_kind.get("featvis", {}).get(unit), by_kind.get("stats", {}).get(unit)
        trust, purity = by_kind.get("trust", {}).get(unit), by_kind.get("purity", {}).get(unit)
        cells.append({
            "unit": unit, "image": _picture(vis), "value": vis.payload.get("value") if vis else None,
            "render_dead": bool(vis and vis.payload.get("render_dead")),
            "dead": stats.payload.get("dead") if stats else None,
            "mean": stats.payload.get("mean") if stats else None,
            "sparsity": stats.payload.get("sparsity") if stats else None,
            "trust": trust.payload.get("ratio") if trust else None,
            "majority": purity.payload.get("majority") if purity else None,
            "purity": purity.payload.get("fraction") if purity else None,
        })
    sortable = ["unit", "value"] + [k for k in ("trust", "mean", "sparsity", "purity")
                                    if any(c[k] is not None for c in cells)]
    selected = [row["name"] for row in atlas.layers(selected=True)]
    level = {k: r.payload for k, units in by_kind.items() for u, r in units.items() if u == -1}
    return {"page": "layer", "model": _model(atlas), "layer": layer, "cells": cells, "sortable": sortable,
            "stats": level.get("layer_stats"), "probe": level.get("probe"),
            "neighbours": _neighbours(selected, name)}


def unit_page(atlas: Atlas, name: str, unit: int) -> dict[str, Any] | None:
    """A unit: every stored result about it, one section per kind, with recipes."""
    layer = atlas.layer(name)
    units = atlas.units(name) if layer else []
    if unit not in units:
        return None
    results = {r.kind: r.to_dict() for r in atlas.results(layer=name, unit=unit)}
    if "stats" in results:
        results["stats"]["view"] = _histogram_view(results["stats"]["payload"].get("histogram"))
    order = [k for k in UNIT_SECTIONS if k in results] + sorted(k for k in results if k not in UNIT_SECTIONS)
    sections = [{"kind": k, "title": KINDS[k].title if k in KINDS else k, "known": k in UNIT_SECTIONS}
                for k in order]
    return {"page": "unit", "model": _model(atlas), "layer": layer, "unit": unit, "results": results,
            "sections": sections, "neighbours": _neighbours(units, unit),
            "channels": layer["shape"][0] if layer["shape"] else None}


def _histogram_view(histogram: dict[str, Any] | None) -> dict[str, Any] | None:
    """The histogram's bins from the first to the last non-empty one, with the edges around them."""
    if not histogram or not any(histogram.get("counts", [])):
        return None
    counts, edges = histogram["counts"], histogram["edges"]  # len(edges) == len(counts) - 1
    first = next(i for i, c in enumerate(counts) if c)
    last = max(i for i, c in enumerate(counts) if c)
    low = edges[first - 1] if first > 0 else None
    high = edges[last] if last < len(edges) else None
    return {"counts": counts[first:last + 1], "low": low, "high": high}


def tsne_page(atlas: Atlas) -> dict[str, Any] | None:
    """The t-SNE grid, each cell naming its dataset image (stored by the analysis stage)."""
    result = atlas.result("tsne")
    if result is None:
        return None
    return {"page": "tsne", "model": _model(atlas), "tsne": result.to_dict(),
            "stored": {d["index"]: {"image": d["image"], "class": d["class"]} for d in _dataset(atlas)}}


def image_page(atlas: Atlas, index: int) -> dict[str, Any] | None:
    """A dataset image of the atlas's sample: the model's predictions and the units whose top images it is among
    (when stored)."""
    result = atlas.result("dataset_image", "", index)
    if result is None:
        return None
    top = [{"layer": r.layer, "unit": r.unit, "rank": k + 1, "value": e.get("value")}
           for r in atlas.results("topk", recipes=False) for k, e in enumerate(r.payload.get("examples", []))
           if e.get("index") == index]
    prediction = atlas.result("prediction", "", index)
    return {"page": "image", "model": _model(atlas), "image": result.to_dict(), "top_of": top,
            "prediction": prediction.to_dict() if prediction else None}


def live_page(atlas: Atlas) -> dict[str, Any]:
    """The live page: the layers to show activations of, the classes to explain, the dataset images to pick."""
    model = _model(atlas)
    layers = [row["name"] for row in atlas.layers() if row["shape"] and len(row["shape"]) == 3]
    return {"page": "live", "model": model, "layers": layers, "dataset": _dataset(atlas),
            "default_layer": next((r["name"] for r in atlas.layers(selected=True)), layers[0] if layers else None),
            "methods": [["saliency", "saliency"], ["guided", "guided backprop"], ["gradcam", "Grad-CAM"],
                        ["occlusion", "occlusion"], ["ig", "integrated gradients"]]}


@lru_cache(maxsize=1)
def _environment():
    from jinja2 import Environment, PackageLoader, select_autoescape

    env = Environment(loader=PackageLoader("convscope.web", "templates"), autoescape=select_autoescape(),
                      trim_blocks=True, lstrip_blocks=True)
    env.filters["num"] = lambda v, digits=3: "-" if v is None else f"{v:.{digits}g}"
    env.filters["pct"] = lambda v: "-" if v is None else f"{100 * v:.1f}%"
    env.filters["shape"] = lambda s: "-" if not s else "x".join(str(v) for v in s)
    return env


def render_html(data: dict[str, Any], links: Links, *, live: bool = True) -> str:
    """The HTML of a page dict (from one of the page functions); `live` False for the static export."""
    extra: dict[str, Any] = {}
    if data["page"] == "overview":
        extra["graph"] = graph_svg(data["layers"], links)
    template = _environment().get_template(f"{data['page']}.html")
    return template.render(data=data, links=links, live=live, kinds=KINDS, **extra)
