"""`export`: the viewer's pages written as a static site (HTML, JSON, the atlas's images), with relative links only,
so the folder can be opened from disk or published as files. The live page needs the server and says so."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ..atlas.store import Atlas, AtlasError, file_name
from .links import Links
from .pages import image_page, layer_page, live_page, overview, render_html, tsne_page, unit_page
from .safe import safe_file

__all__ = ["export"]


def _write(site: Path, parts: tuple, data: dict | None) -> int:
    if data is None:
        return 0
    spelled = "/".join(file_name(str(p)) for p in parts)
    page = site / (spelled + ".html" if parts else "index.html")
    page.parent.mkdir(parents=True, exist_ok=True)
    page.write_text(render_html(data, Links(depth=max(0, len(parts) - 1), static=True), live=False))
    if parts and parts[0] == "live":
        return 1
    api = site / "api" / ((spelled or "model") + ".json")
    api.parent.mkdir(parents=True, exist_ok=True)
    api.write_text(json.dumps(data, indent=1, sort_keys=True, default=str))
    return 1


def export(folder: str | Path, site: str | Path) -> Path:
    """Write every page of the atlas in `folder` into `site` (made if missing) and return `site`."""
    site = Path(site)
    folder = Path(folder)
    if site.resolve() == folder.resolve() or folder.resolve() in site.resolve().parents:
        raise AtlasError(f"export into {str(site)!r}: choose a folder outside the atlas")
    site.mkdir(parents=True, exist_ok=True)
    with Atlas(folder, readonly=True) as atlas:
        _write(site, (), overview(atlas))
        for row in atlas.layers():
            name = row["name"]
            _write(site, ("layer", name), layer_page(atlas, name))
            for unit in atlas.units(name):
                _write(site, ("layer", name, "unit", unit), unit_page(atlas, name, unit))
        _write(site, ("tsne",), tsne_page(atlas))
        for result in atlas.results("dataset_image"):
            _write(site, ("image", result.unit), image_page(atlas, result.unit))
        _write(site, ("live",), live_page(atlas))
        for row in atlas.image_rows():
            source = safe_file(atlas.folder, row[4], top="files")
            if source is None:
                raise AtlasError(f"atlas {str(folder)!r}: file {row[4]} is missing or outside the atlas; run "
                                 "`convscope atlas check`")
            target = site / row[4]
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
    static = site / "static"
    static.mkdir(exist_ok=True)
    for asset in (Path(__file__).parent / "static").iterdir():
        if asset.is_file():
            shutil.copyfile(asset, static / asset.name)
    return site
