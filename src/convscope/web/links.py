"""Relative links, so the same templates serve pages from the server and from a static export.

Every page knows its path below the atlas root ("", "layer/conv1", "layer/conv1/unit/3") and links back up with
"../" only: the server's URLs (`/layer/conv1/unit/3`, also below a mount such as `/fashion/`) and the export's
files (`layer/conv1/unit/3.html`) then differ only in how a page path is spelled, never in the page's HTML logic.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote

from ..atlas.store import file_name

__all__ = ["Links", "page_path"]


def page_path(*parts: str | int) -> str:
    """The logical path of a page: `page_path("layer", "conv1", "unit", 3)` -> "layer/conv1/unit/3"."""
    return "/".join(str(p) for p in parts)


@dataclass(frozen=True)
class Links:
    """Link builder for one page.

    Attributes:
        depth: how many folders below the atlas root the page sits ("layer/conv1/unit/3" -> 3).
        static: True for the exported site (pages are `.html` files, names made file-safe, the API is `.json`).
    """

    depth: int = 0
    static: bool = False

    @classmethod
    def for_page(cls, path: str, *, static: bool = False) -> Links:
        return cls(depth=path.count("/") if path else 0, static=static)

    @property
    def root(self) -> str:
        return "../" * self.depth

    def _spell(self, parts: tuple[str | int, ...]) -> str:
        if self.static:
            return "/".join(file_name(str(p)) for p in parts)
        return "/".join(quote(str(p), safe="") for p in parts)

    def page(self, *parts: str | int) -> str:
        """Link to a page: `links.page("layer", name, "unit", 3)`; no parts: the overview."""
        if not parts:
            return self.root + "index.html" if self.static else (self.root or "./")
        return self.root + self._spell(parts) + (".html" if self.static else "")

    def api(self, *parts: str | int) -> str:
        """Link to the JSON of a page (`links.api("layer", name)`)."""
        return self.root + "api/" + (self._spell(parts) or "model") + (".json" if self.static else "")

    def file(self, relative: str) -> str:
        """Link to an atlas file ("files/featvis/conv1/3.png"): the same path in the server and the export."""
        return self.root + quote(relative)

    def asset(self, name: str) -> str:
        return self.root + "static/" + name
