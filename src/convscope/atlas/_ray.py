"""The atlas's Ray engine: one Ray for the whole build, and render chunks as Ray tasks.

`ray_session(config)` joins `config.address`, or starts a local Ray when none is running, and stops only a Ray it
started; the dataset scan (`analysis.scan(engine="ray")`) then finds it running and uses it as it is. `run_chunks`
runs `fn(spec, *job)` for every job, as Ray tasks (one CPU each, a few in flight per CPU) under `--engine ray` or one
after the other in this process otherwise, and yields (job, result) as each finishes. A job's result depends only on
the job (renders seed item i of a chunk from (seed, i), the precision is pinned before any chunk runs), so where a
chunk ran never changes the atlas. Workers need convscope, torch and the same versions, as for the scan.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from ..errors import ConvscopeError

__all__ = ["ray_session", "run_chunks"]


def _ray():
    try:
        import ray
    except ImportError:
        raise ConvscopeError("--engine ray needs Ray: pip install 'convscope[ray]' (ray 2.60)") from None
    return ray


@contextlib.contextmanager
def ray_session(config: Any) -> Iterator[None]:
    """A running Ray for `config.engine == "ray"` (nothing otherwise) for the block."""
    if config.engine != "ray":
        yield
        return
    ray = _ray()
    started = False
    if not ray.is_initialized():
        options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
        try:
            if config.address:
                ray.init(address=config.address, **options)
            else:
                ray.init(num_cpus=os.cpu_count() or 1, **options)
        except Exception as error:  # noqa: BLE001 - one line saying why, not Ray's traceback
            where = f"the Ray cluster at {config.address}" if config.address else "a local Ray"
            raise ConvscopeError(f"cannot start {where}: {type(error).__name__}: {error}") from None
        started = True
    try:
        yield
    finally:
        if started:
            ray.shutdown()


def run_chunks(ctx: Any, fn: Callable[..., Any], jobs: Sequence[tuple[Any, ...]]) -> Iterator[tuple[tuple, Any]]:
    """(job, fn(ctx.spec, *job)) for every job, in the order they finish (locally: in order)."""
    if ctx.config.engine != "ray":
        for job in jobs:
            yield job, fn(ctx.spec, *job)
        return
    ray = _ray()
    task = ray.remote(num_cpus=1)(fn)
    spec = ray.put(ctx.spec)
    window = 2 * max(1, int(ray.cluster_resources().get("CPU", 1)))
    queue = iter(jobs)
    pending: dict[Any, tuple] = {}

    def submit() -> None:
        job = next(queue, None)
        if job is not None:
            pending[task.remote(spec, *job)] = job

    try:
        for _ in range(window):
            submit()
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            job = pending.pop(ready[0])
            result = ray.get(ready[0])
            submit()
            yield job, result
    finally:
        for ref in pending:  # Ctrl-C or an error: stop what is still queued
            ray.cancel(ref, force=True)
