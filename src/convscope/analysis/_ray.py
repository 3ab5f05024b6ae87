"""The Ray engine: shards of a scan as Ray tasks, merged on the driver in shard order (the same merges, in the same
order, as the local engine, so the result is the same bits).

Without an address it starts a local Ray (one worker per core) and shuts it down afterwards; with `address`
("auto", "ray://head:10001", "HOST:6379") it joins that cluster. A Ray already initialized by the caller is used
as it is and left running. Workers need convscope (and torch) installed and the dataset readable at the same path:
the model and dataset objects are shipped once through Ray's object store, image folders as their file paths.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from ..errors import ConvscopeError
from ._collect import Collector, Plan
from ._engine import Accumulator, ShardRunner

__all__ = ["run_ray"]


def _shard_task(spec: Any, dataset: Any, plan: Plan, collectors: Sequence[Collector], shard: int) -> dict[str, Any]:
    with ShardRunner(spec, dataset, plan, collectors) as runner:
        return runner.run(shard)


def _import_ray():
    try:
        import ray
    except ImportError:
        raise ConvscopeError("engine='ray' needs Ray: pip install 'convscope[ray]' (ray 2.60)") from None
    return ray


def run_ray(spec: Any, dataset: Any, plan: Plan, collectors: Sequence[Collector], acc: Accumulator, *,
            address: str | None = None, workers: int | None = None,
            progress: Callable[[int, int], None] | None = None) -> None:
    """Scan the shards `acc` has not merged yet as Ray tasks; merge and checkpoint each in shard order."""
    ray = _import_ray()
    todo = list(range(acc.done, plan.shards))
    done_items = sum(len(plan.shard_range(s)) for s in range(acc.done))
    if progress is not None:
        progress(done_items, plan.items)
    if not todo:
        return
    started = False
    if not ray.is_initialized():
        options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
        if address:
            ray.init(address=address, **options)
        else:
            ray.init(num_cpus=workers or os.cpu_count() or 1, **options)
        started = True
    pending: dict[Any, int] = {}
    try:
        task = ray.remote(num_cpus=1)(_shard_task)
        spec_ref, data_ref = ray.put(spec), ray.put(dataset)
        cpus = int(ray.cluster_resources().get("CPU", 1))
        window = 2 * max(1, min(workers or cpus, cpus))  # shards in flight: results wait for their turn to merge
        queue = iter(todo)
        results: dict[int, dict[str, Any]] = {}

        def submit() -> None:
            shard = next(queue, None)
            if shard is not None:
                pending[task.remote(spec_ref, data_ref, plan, list(collectors), shard)] = shard

        for _ in range(window):
            submit()
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            shard = pending.pop(ready[0])
            results[shard] = ray.get(ready[0])
            submit()
            while acc.done in results:
                result = results.pop(acc.done)
                acc.add(acc.done, result)
                done_items += result["items"]
                if progress is not None:
                    progress(done_items, plan.items)
    except BaseException:
        for ref in pending:
            ray.cancel(ref, force=True)
        raise
    finally:
        if started:
            ray.shutdown()
