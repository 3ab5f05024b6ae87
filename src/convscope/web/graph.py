"""The model drawn as an SVG diagram: its module tree in call order, collapsed to a readable depth.

Like TensorBoard's graph view at its first levels: each box is a module (name, type, output shape) linking to its
layer page, the boxes that hold it are drawn around it, and arrows follow the order the modules ran in the probe
pass. Branches and skip connections are not drawn (that would need the traced graph, which not every model has).
"""

from __future__ import annotations

from html import escape
from typing import Any

from .links import Links

__all__ = ["graph_svg"]

WIDTH, NODE, GAP, HEADER, INDENT, PAD = 560, 26, 12, 18, 12, 6


def _depth(path: str) -> int:
    return path.count(".") + 1


def _nodes(rows: list[dict[str, Any]], max_nodes: int) -> tuple[list[dict[str, Any]], set[str]]:
    ran = [r for r in rows if r["calls"] >= 1 and "#" not in r["name"] and r["path"]]
    paths = [r["path"] for r in ran]
    parents = {p.rsplit(".", 1)[0] for p in paths if "." in p}
    deepest = max((_depth(p) for p in paths), default=1)

    def count(depth: int) -> int:
        return sum(1 for r in ran if _depth(r["path"]) == depth or (_depth(r["path"]) < depth
                                                                     and r["path"] not in parents))

    # deep enough to show the atlas's layers as boxes of their own, else as deep as stays readable
    wanted = max((_depth(r["path"]) for r in ran if r["selected"]), default=0)
    chosen = 1
    for depth in range(1, deepest + 1):
        if count(depth) > max_nodes and depth > 1:
            break
        chosen = depth
    if 0 < wanted <= chosen or (wanted and count(wanted) <= max_nodes):
        chosen = wanted
    nodes = [r for r in ran if _depth(r["path"]) == chosen or (_depth(r["path"]) < chosen and r["path"] not in parents)]
    return nodes, parents


def _chain(path: str, containers: set[str]) -> list[str]:
    parts = path.split(".")
    return [".".join(parts[:k]) for k in range(1, len(parts)) if ".".join(parts[:k]) in containers]


def graph_svg(rows: list[dict[str, Any]], links: Links, *, max_nodes: int = 48) -> str:
    """An SVG of the overview's layer rows (name, path, type, shape, calls, selected) with links to layer pages."""
    nodes, parents = _nodes(rows, max_nodes)
    if not nodes:
        return ""
    by_path = {r["path"]: r for r in rows}
    selected_below = {p: sum(1 for r in rows if r["selected"] and r["path"].startswith(p + ".")) for p in parents}
    parts: list[str] = []
    boxes: list[tuple[str, int, int, int]] = []  # (container path, level, top, bottom)
    open_: list[tuple[str, int]] = []  # (container path, top)
    y, previous = PAD, None
    for node in nodes:
        chain = _chain(node["path"], parents)
        while open_ and open_[-1][0] not in chain:
            path, top = open_.pop()
            y += PAD
            boxes.append((path, len(open_), top, y))
        for path in chain[len(open_):]:
            open_.append((path, y))
            y += HEADER
        level = len(open_)
        x = INDENT * level + PAD
        if previous is not None:
            parts.append(f'<line class="flow" x1="{WIDTH // 2}" y1="{previous}" x2="{WIDTH // 2}" y2="{y - 1}" '
                         'marker-end="url(#arrow)"/>')
        shape = "x".join(str(v) for v in node["shape"]) if node["shape"] else ""
        below = selected_below.get(node["path"], 0)
        note = f" · {below} in atlas" if below else ""
        css = "node sel" if node["selected"] or below else "node"
        text = escape(f"{node['name']}  {node['type']}  {shape}{note}")
        parts.append(f'<a href="{escape(links.page("layer", node["name"]))}"><g class="{css}">'
                     f'<rect x="{x}" y="{y}" width="{WIDTH - 2 * x}" height="{NODE}" rx="5"/>'
                     f'<text x="{WIDTH // 2}" y="{y + NODE / 2 + 4:.0f}" text-anchor="middle">{text}</text></g></a>')
        previous = y + NODE
        y += NODE + GAP
    while open_:
        path, top = open_.pop()
        y += PAD
        boxes.append((path, len(open_), top, y))
    frames = []
    for path, level, top, bottom in boxes:
        x = INDENT * level + PAD - PAD // 2
        row = by_path.get(path, {"name": path, "type": "", "selected": False})
        css = "group sel" if row.get("selected") else "group"
        frames.append(f'<a href="{escape(links.page("layer", row["name"]))}"><g class="{css}">'
                      f'<rect x="{x}" y="{top - PAD // 2}" width="{WIDTH - 2 * x}" height="{bottom - top}" rx="7"/>'
                      f'<text x="{x + 6}" y="{top + HEADER - 6}">{escape(row["name"] + "  " + row["type"])}</text>'
                      '</g></a>')
    height = y + PAD
    return (f'<svg class="graph" xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
            f'viewBox="0 0 {WIDTH} {height}" role="img" aria-label="module tree of the model">'
            '<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" '
            'orient="auto"><path d="M0,0 L10,5 L0,10 z"/></marker></defs>'
            + "".join(frames) + "".join(parts) + "</svg>")
