"""The Ray engine: shards of a scan as Ray tasks, merged on the driver in shard order (the same merges, in the same
order, as the local engine, so the result is the same bits).

Without an address it starts a local Ray (one worker per core) and shuts it down afterwards; with `address`
("auto", "ray://head:10001", "HOST:6379") it joins that cluster. A Ray already initialized by the caller is used
as it is and left running. Workers need convscope (and torch) installed and the dataset readable at the same path:
the model and dataset objects are shipped once through Ray's object store, image folders as their file paths.
`ray_session` and `completed` (a Ray for a block; jobs as Ray tasks, yielded as they finish) serve the atlas too.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from ..errors import ConvscopeError
from ._collect import Collector, Plan
from ._engine import Accumulator, ShardRunner

__all__ = ["run_ray", "ray_session", "completed"]


def _shard_task(spec: Any, dataset: Any, plan: Plan, collectors: Sequence[Collector], shard: int) -> dict[str, Any]:
    with ShardRunner(spec, dataset, plan, collectors) as runner:
        return runner.run(shard)


def _import_ray():
    try:
        import ray
    except ImportError:
        raise ConvscopeError("engine 'ray' needs Ray: pip install 'convscope[ray]' (ray 2.60)") from None
    return ray


@contextlib.contextmanager
def ray_session(address: str | None = None, workers: int | None = None) -> Iterator[Any]:
    """The `ray` module with a running Ray for the block: the one already initialized, else one joined at `address`
    or started locally with `workers` CPUs (default: every core), shut down afterwards. A Ray that cannot start
    raises one line saying why."""
    ray = _import_ray()
    started = False
    if not ray.is_initialized():
        options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
        try:
            if address:
                ray.init(address=address, **options)
            else:
                ray.init(num_cpus=workers or os.cpu_count() or 1, **options)
        except Exception as error:  # noqa: BLE001 - one line saying why, not Ray's traceback
            where = f"the Ray cluster at {address}" if address else "a local Ray"
            raise ConvscopeError(f"cannot start {where}: {type(error).__name__}: {error}") from None
        started = True
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()


def completed(ray: Any, fn: Callable[..., Any], shared: tuple[Any, ...], jobs: Sequence[tuple[Any, ...]],
              workers: int | None = None) -> Iterator[tuple[tuple[Any, ...], Any]]:
    """(job, fn(*shared, *job)) for every job, run as Ray tasks of one CPU each and yielded as each finishes.
    `shared` goes through Ray's object store once; two tasks per CPU (at most `workers` CPUs) are in flight. When
    the caller stops early (Ctrl-C, an error), the tasks still queued are cancelled."""
    task = ray.remote(num_cpus=1)(fn)
    refs = [ray.put(value) for value in shared]
    cpus = int(ray.cluster_resources().get("CPU", 1))
    window = 2 * max(1, min(workers or cpus, cpus))
    queue = iter(jobs)
    pending: dict[Any, tuple[Any, ...]] = {}

    def submit() -> None:
        job = next(queue, None)
        if job is not None:
            pending[task.remote(*refs, *job)] = job

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
        for ref in pending:
            ray.cancel(ref, force=True)


def run_ray(spec: Any, dataset: Any, plan: Plan, collectors: Sequence[Collector], acc: Accumulator, *,
            address: str | None = None, workers: int | None = None,
            progress: Callable[[int, int], None] | None = None) -> None:
    """Scan the shards `acc` has not merged yet as Ray tasks; merge and checkpoint each in shard order."""
    todo = list(range(acc.done, plan.shards))
    done_items = sum(len(plan.shard_range(s)) for s in range(acc.done))
    if progress is not None:
        progress(done_items, plan.items)
    if not todo:
        return
    results: dict[int, dict[str, Any]] = {}  # finished shards waiting for their turn to merge
    with ray_session(address, workers) as ray:
        jobs = [(plan, list(collectors), shard) for shard in todo]
        for (_, _, shard), result in completed(ray, _shard_task, (spec, dataset), jobs, workers):
            results[shard] = result
            while acc.done in results:
                result = results.pop(acc.done)
                acc.add(acc.done, result)
                done_items += result["items"]
                if progress is not None:
                    progress(done_items, plan.items)
