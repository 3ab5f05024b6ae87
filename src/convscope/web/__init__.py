"""The viewer: an atlas as web pages, served by FastAPI (`convscope serve`) or exported as a static site.

    from convscope.web import create_site, export
    app = create_site(["atlas/fashion"])       # an ASGI app: uvicorn.run(app, host="127.0.0.1")
    export("atlas/fashion", "site/")            # the same pages as files

`pages` turns an atlas into page dicts (the JSON API returns them as they are) and renders them with the Jinja2
templates; `links` makes every link relative so the server and the export share the templates. The viewer reads
atlases and calls the library's public functions for the live page; it never touches hooks itself.
"""

from .export import export
from .uploads import UploadError, UploadLimits

__all__ = ["UploadError", "UploadLimits", "create_app", "create_site", "export", "find_atlases", "serve"]


def __getattr__(name: str):
    """The server needs FastAPI and uvicorn (`pip install convscope[web]`); the export needs Jinja2 only."""
    if name in ("create_app", "create_site", "find_atlases", "serve"):
        from . import app

        return getattr(app, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
