"""The live page's analyses: one worker thread per model runs them one at a time, as jobs the page polls.

One thread owns the model, so concurrent requests can never interleave hooks or module swaps on it; requests only
queue jobs and read their state. A failing job records its message and the worker goes on. Uploaded images and
finished jobs are kept in bounded LRU tables, so memory stays flat however many requests come.
"""

from __future__ import annotations

import io
import logging
import queue
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from ..errors import ConvscopeError
from .uploads import UploadError

__all__ = ["LiveAnalyses", "Job", "ANALYSES", "METHODS"]

log = logging.getLogger("convscope.web")

ANALYSES = ("predict", "activations", "attribution")
METHODS = ("saliency", "guided", "gradcam", "occlusion", "ig")


@dataclass
class Job:
    id: str
    kind: str
    image: str
    params: dict[str, Any]
    status: str = "queued"
    created: float = field(default_factory=time.perf_counter)
    started: float | None = None
    finished: float | None = None
    result: dict[str, Any] = field(default_factory=dict)
    png: bytes | None = None
    error: str | None = None

    def to_dict(self, ahead: int = 0) -> dict[str, Any]:
        end = self.finished or time.perf_counter()
        return {"id": self.id, "kind": self.kind, "image": self.png is not None, "params": self.params,
                "status": self.status, "ahead": ahead, "result": self.result, "error": self.error,
                "elapsed": end - (self.started or end), "seconds": (self.finished or end) - (self.started or end)}


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


class LiveAnalyses:
    """Jobs on one model. `load_model()` is called once, on the worker thread, at the first job."""

    def __init__(self, load_model: Callable[[], Any], *, max_images: int = 16, max_jobs: int = 64) -> None:
        self._load = load_model
        self._spec: Any = None
        self._images: OrderedDict[str, Image.Image] = OrderedDict()
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._max_images, self._max_jobs = max_images, max_jobs
        self._lock = threading.Lock()
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._thread = threading.Thread(target=self._work, name="convscope-live", daemon=True)
        self._thread.start()

    # ---- called by request handlers (any thread) ------------------------------------------------------------------

    def add_image(self, image: Image.Image, key: str | None = None) -> str:
        key = key or "u" + secrets.token_hex(8)
        with self._lock:
            self._images[key] = image
            self._images.move_to_end(key)
            while len(self._images) > self._max_images:
                self._images.popitem(last=False)
        return key

    def image(self, key: str) -> Image.Image | None:
        with self._lock:
            found = self._images.get(key)
            if found is not None:
                self._images.move_to_end(key)
            return found

    def submit(self, image: str, kind: str, params: dict[str, Any]) -> Job:
        if kind not in ANALYSES:
            raise UploadError(f"unknown analysis {kind!r}; choose one of {', '.join(ANALYSES)}")
        if kind == "attribution" and params.get("method") not in METHODS:
            raise UploadError(f"unknown attribution method {params.get('method')!r}; choose one of "
                              f"{', '.join(METHODS)}")
        if self.image(image) is None:
            raise UploadError(f"image {image!r} is not held by the server (any more): upload it again", status=404)
        job = Job(id=secrets.token_hex(8), kind=kind, image=image, params=params)
        with self._lock:
            waiting = sum(1 for j in self._jobs.values() if j.status in ("queued", "running"))
            if waiting >= self._max_jobs:
                raise UploadError(f"the server is busy with {waiting} analyses; try again in a moment", status=503)
            self._jobs[job.id] = job
            while len(self._jobs) > self._max_jobs:
                oldest = next(iter(self._jobs.values()))
                if oldest.status in ("queued", "running"):
                    break  # never drop work in flight; the table shrinks as it finishes
                self._jobs.popitem(last=False)
        self._queue.put(job)
        return job

    def job(self, job_id: str) -> dict[str, Any] | None:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                return None
            ahead = sum(1 for j in self._jobs.values() if j.status == "queued" and j.created < job.created)
            return job.to_dict(ahead)

    def job_png(self, job_id: str) -> bytes | None:
        with self._lock:
            job = self._jobs.get(job_id)
            return job.png if job is not None else None

    def close(self, timeout: float = 5.0) -> None:
        self._queue.put(None)
        self._thread.join(timeout)

    # ---- the worker thread ----------------------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            job.started = time.perf_counter()
            job.status = "running"
            try:
                self._run(job)
            except ConvscopeError as error:
                job.error = str(error)
            except Exception as error:  # noqa: BLE001 - a failing analysis must not stop the worker
                log.exception("live analysis %s failed", job.kind)
                job.error = f"the analysis failed: {type(error).__name__}: {error}"
            finally:
                job.finished = time.perf_counter()
                job.status = "error" if job.error else "done"

    def _model(self) -> Any:
        if self._spec is None:
            self._spec = self._load()
        return self._spec

    def _run(self, job: Job) -> None:
        spec = self._model()
        image = self.image(job.image)
        if image is None:
            raise UploadError("the image was dropped before its turn came: upload it again")
        if job.kind == "predict":
            from ..models import predict

            rows = predict(spec, image, top=5).rows()[0]["top"]
            job.result = {"predictions": rows}
        elif job.kind == "activations":
            from ..analysis import activations

            grid = activations(spec, image, job.params.get("layer") or "")
            job.result = {"layer": grid.layer, "channels": int(grid.tensor.shape[0]), "dead": len(grid.dead)}
            job.png = _png(grid.to_image())
        else:
            self._attribution(spec, image, job)

    def _attribution(self, spec: Any, image: Image.Image, job: Job) -> None:
        from ..attribution import METHODS as ALL

        method = job.params["method"]
        target = job.params.get("target") or None
        target = spec.class_index(target) if target is not None else None
        x = spec.preprocess(image)
        options: dict[str, Any] = {}
        if method == "occlusion":
            side = min(spec.input_size)
            window = min(16, max(3, side // 4))
            options = {"window": window, "stride": max(1, window // 2)}
        result = ALL[method](spec, x, target=target, **options)
        chosen = int(result.classes[0]) if result.classes is not None else target
        job.result = {"method": method, "target": chosen,
                      "target_name": spec.class_name(chosen) if chosen is not None else None}
        job.png = _png(result.to_image(0, cell=200))
