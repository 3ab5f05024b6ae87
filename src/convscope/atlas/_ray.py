"""The atlas's Ray engine: one Ray for the whole build, and render chunks as Ray tasks.

`ray_session(config)` joins `config.address`, or starts a local Ray when none is running, and stops only a Ray it
started (`analysis._ray.ray_session`); the dataset scan (`analysis.scan(engine="ray")`) then finds it running and
uses it as it is. `run_chunks` runs `fn(spec, *job)` for every job, as Ray tasks (`analysis._ray.completed`: one CPU
each, a few in flight per CPU) under `--engine ray` or one after the other in this process otherwise, and yields
(job, result) as each finishes. A job's result depends only on the job (renders seed item i of a chunk from
(seed, i), the precision is pinned before any chunk runs), so where a chunk ran never changes the atlas. Workers need
convscope, torch and the same versions, as for the scan.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from ..analysis import _ray as engine

__all__ = ["ray_session", "run_chunks"]


@contextlib.contextmanager
def ray_session(config: Any) -> Iterator[None]:
    """A running Ray for `config.engine == "ray"` (nothing otherwise) for the block."""
    if config.engine != "ray":
        yield
        return
    with engine.ray_session(config.address):
        yield


def run_chunks(ctx: Any, fn: Callable[..., Any], jobs: Sequence[tuple[Any, ...]]) -> Iterator[tuple[tuple, Any]]:
    """(job, fn(ctx.spec, *job)) for every job, in the order they finish (locally: in order)."""
    if ctx.config.engine != "ray":
        for job in jobs:
            yield job, fn(ctx.spec, *job)
        return
    with engine.ray_session(ctx.config.address) as ray:  # the build's Ray, already running
        yield from engine.completed(ray, fn, (ctx.spec,), jobs)
