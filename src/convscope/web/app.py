"""The viewer's server: FastAPI over one atlas (or several side by side), plus the live analyses.

Pages and their JSON (`/api/...`) come from the same page functions (`pages`); files come only from the atlas's
`files/` folder and the package's `static/` folder (`safe.safe_file`), with cache headers. The live page's
uploads go through `uploads` (bounded) and its analyses through one worker thread (`live`).
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException

from ..atlas.store import Atlas, AtlasError
from .links import Links
from .live import LiveAnalyses
from .pages import image_page, layer_page, live_page, overview, render_html, tsne_page, unit_page
from .safe import safe_file
from .uploads import UploadError, UploadLimits, decode_image, read_upload

__all__ = ["create_app", "create_site", "find_atlases", "serve", "STATIC"]

STATIC = Path(__file__).parent / "static"
FILE_CACHE = "public, max-age=86400"
ASSET_CACHE = "public, max-age=3600"
log = logging.getLogger("convscope.web")


def _model_loader(folder: Path, device: Any):
    def load_model():
        from ..models import load

        with Atlas(folder, readonly=True) as atlas:
            model, config = atlas.model(), atlas.meta().get("config", {})
        if model is None:
            raise AtlasError(f"atlas {str(folder)!r} has no model yet")
        try:
            return load(model["source"], arch=config.get("arch"), seed=config.get("seed", 0), device=device)
        except Exception as error:  # noqa: BLE001 - say why the live page cannot work; the atlas pages still do
            raise AtlasError(f"the live page cannot load model {model['source']!r} here: {error}") from None

    return load_model


def _index(text: str) -> int | None:
    return int(text) if re.fullmatch(r"-?\d{1,9}", text) else None


def create_app(folder: str | Path, *, device: Any = None, limits: UploadLimits = UploadLimits()):
    """The FastAPI app of the atlas in `folder` (checked now: a missing or unreadable atlas raises `AtlasError`)."""
    folder = Path(folder)
    Atlas(folder, readonly=True).close()
    live = LiveAnalyses(_model_loader(folder, device))

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        yield
        live.close()

    app = FastAPI(title="convscope atlas", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.live, app.state.folder = live, folder

    def missing(what: str) -> HTTPException:
        return HTTPException(404, what)

    def page(path: str, data: dict[str, Any] | None, what: str) -> HTMLResponse:
        if data is None:
            raise missing(what)
        return HTMLResponse(render_html(data, Links.for_page(path)), headers={"Cache-Control": "no-cache"})

    def api(data: dict[str, Any] | None, what: str) -> JSONResponse:
        if data is None:
            raise missing(what)
        return JSONResponse(data, headers={"Cache-Control": "no-cache"})

    def read(fn, *args):
        with Atlas(folder, readonly=True) as atlas:
            return fn(atlas, *args)

    def unit_of(unit: str) -> int:
        found = _index(unit)
        if found is None:
            raise missing(f"unit {unit!r} is not a number")
        return found

    @app.exception_handler(HTTPException)
    async def not_found(request: Request, error: HTTPException):
        mount = request.scope.get("root_path", "")
        path = request.url.path[len(mount):] if request.url.path.startswith(mount) else request.url.path
        if path.startswith(("/api/", "/files/", "/static/")):
            return JSONResponse({"error": str(error.detail)}, status_code=error.status_code)
        from .pages import _environment

        home = Links.for_page(path.lstrip("/")).page()
        body = _environment().get_template("error.html").render(status=error.status_code, message=error.detail,
                                                                home=home)
        return HTMLResponse(body, status_code=error.status_code)

    @app.exception_handler(UploadError)
    async def upload_error(_request: Request, error: UploadError):
        # a refused body may still be arriving: close the connection rather than wait for the rest
        headers = {"Connection": "close"} if error.status == 413 else None
        return JSONResponse({"error": str(error)}, status_code=error.status, headers=headers)

    @app.get("/")
    def overview_html():
        return page("", read(overview), "no overview")

    @app.get("/layer/{name}")
    def layer_html(name: str):
        return page(f"layer/{name}", read(layer_page, name), f"layer {name!r} is not in this atlas")

    @app.get("/layer/{name}/unit/{unit}")
    def unit_html(name: str, unit: str):
        return page(f"layer/{name}/unit/{unit}", read(unit_page, name, unit_of(unit)),
                    f"unit {name}:{unit} is not in this atlas")

    @app.get("/tsne")
    def tsne_html():
        return page("tsne", read(tsne_page), "this atlas holds no t-SNE grid (yet)")

    @app.get("/image/{index}")
    def image_html(index: str):
        return page(f"image/{index}", read(image_page, unit_of(index)), f"image {index} is not in this atlas")

    @app.get("/live")
    def live_html():
        return page("live", read(live_page), "no live page")

    @app.get("/api/model")
    def overview_api():
        return api(read(overview), "no overview")

    @app.get("/api/layer/{name}")
    def layer_api(name: str):
        return api(read(layer_page, name), f"layer {name!r} is not in this atlas")

    @app.get("/api/layer/{name}/unit/{unit}")
    def unit_api(name: str, unit: str):
        return api(read(unit_page, name, unit_of(unit)), f"unit {name}:{unit} is not in this atlas")

    @app.get("/api/tsne")
    def tsne_api():
        return api(read(tsne_page), "this atlas holds no t-SNE grid (yet)")

    @app.get("/api/image/{index}")
    def image_api(index: str):
        return api(read(image_page, unit_of(index)), f"image {index} is not in this atlas")

    @app.get("/files/{path:path}")
    def atlas_file(path: str):
        found = safe_file(folder, f"files/{path}", top="files")
        if found is None:
            raise missing("no such file")
        return FileResponse(found, headers={"Cache-Control": FILE_CACHE})

    @app.get("/static/{path:path}")
    def asset(path: str):
        found = safe_file(STATIC, path)
        if found is None:
            raise missing("no such file")
        return FileResponse(found, headers={"Cache-Control": ASSET_CACHE})

    @app.post("/api/live/images")
    async def upload(request: Request):
        data = await read_upload(request, limits)
        image = decode_image(data, limits)
        key = live.add_image(image)
        return JSONResponse({"id": key, "width": image.width, "height": image.height}, status_code=201)

    @app.get("/api/live/images/{key}.png")
    def uploaded(key: str):
        image = _live_image(key)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return Response(buffer.getvalue(), media_type="image/png", headers={"Cache-Control": "private, max-age=600"})

    def _live_image(key: str):
        image = live.image(key)
        if image is None and key.startswith("d") and _index(key[1:]) is not None:
            stored = read(lambda a: a.result("dataset_image", "", int(key[1:])))
            path = safe_file(folder, stored.images.get("image", ""), top="files") if stored else None
            if path is not None:
                from PIL import Image

                with Image.open(path) as opened:
                    image = opened.convert("L" if opened.mode in ("1", "L") else "RGB")
                live.add_image(image, key)
        if image is None:
            raise missing(f"image {key!r} is not held by the server: upload it again")
        return image

    @app.post("/api/live/jobs")
    def submit(image: str, analysis: str, layer: str | None = None, method: str | None = None,
               target: str | None = None):
        _live_image(image)
        job = live.submit(image, analysis, {"layer": layer, "method": method, "target": target})
        return JSONResponse(live.job(job.id), status_code=202)

    @app.get("/api/live/jobs/{job_id}")
    def job_state(job_id: str):
        return api(live.job(job_id), f"job {job_id!r} is unknown (finished jobs are kept for a while only)")

    @app.get("/api/live/jobs/{job_id}/image.png")
    def job_image(job_id: str):
        data = live.job_png(job_id)
        if data is None:
            raise missing(f"job {job_id!r} has no picture")
        return Response(data, media_type="image/png", headers={"Cache-Control": "private, max-age=600"})

    return app


def find_atlases(paths: Sequence[str | Path]) -> list[Path]:
    """Atlas folders named by `paths`: each an atlas, or a folder whose sub-folders are atlases."""
    from ..atlas._schema import DB_NAME

    found: list[Path] = []
    for path in map(Path, paths):
        if (path / DB_NAME).is_file():
            found.append(path)
            continue
        inside = sorted(p for p in path.iterdir() if (p / DB_NAME).is_file()) if path.is_dir() else []
        if not inside:
            raise AtlasError(f"{str(path)!r} is neither an atlas nor a folder of atlases; build one with "
                             "`convscope atlas build`")
        found += inside
    return found


def create_site(folders: Sequence[str | Path], *, device: Any = None, limits: UploadLimits = UploadLimits()):
    """One atlas: its app at /. Several: an index at / and each atlas below /<folder name>/."""
    folders = [Path(f) for f in folders]
    if len(folders) == 1:
        return create_app(folders[0], device=device, limits=limits)
    apps, entries, used = [], [], set()
    for folder in folders:
        slug = re.sub(r"[^A-Za-z0-9._-]", "-", folder.resolve().name) or "atlas"
        while slug in used:
            slug += "-2"
        used.add(slug)
        sub = create_app(folder, device=device, limits=limits)
        with Atlas(folder, readonly=True) as atlas:
            model = atlas.model() or {"label": slug, "source": "?"}
        apps.append((slug, sub))
        entries.append({"slug": slug, "label": model["label"], "source": model["source"], "folder": str(folder)})

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        yield
        for _, sub in apps:
            sub.state.live.close()

    root = FastAPI(title="convscope atlases", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)

    @root.get("/")
    def index():
        from .pages import _environment

        return HTMLResponse(_environment().get_template("index.html").render(atlases=entries))

    @root.get("/static/{path:path}")
    def asset(path: str):
        found = safe_file(STATIC, path)
        if found is None:
            raise HTTPException(404, "no such file")
        return FileResponse(found, headers={"Cache-Control": ASSET_CACHE})

    for slug, sub in apps:
        root.mount(f"/{slug}", sub)
    return root


def serve(paths: Sequence[str | Path], *, host: str = "127.0.0.1", port: int = 8000, device: Any = None) -> None:
    """Serve the atlases until Ctrl-C, printing the URL to open."""
    import sys

    import uvicorn

    app = create_site(find_atlases(paths), device=device)
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"convscope: warning: binding {host}: other machines can reach this viewer and its uploads",
              file=sys.stderr)
    shown = f"[{host}]" if ":" in host else host
    print(f"convscope: viewer at http://{shown}:{port}/ (Ctrl-C stops it)", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
