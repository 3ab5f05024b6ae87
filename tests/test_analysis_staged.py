"""The scan folds each batch into the units of all layers at once after the forward (`_collect.Staged`): a layer
that does not run in some batches, ties on a unit's value, and a NaN still give what a brute force over the stored
activations gives, layer by layer."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from convscope import analysis, data
from convscope.errors import NonFiniteError
from convscope.models import load

pytestmark = pytest.mark.usefixtures("one_thread")


class Branchy(nn.Module):
    """`b` runs only on batches without a bright pixel; `a` and `c` on every batch."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(1, 3, 3)
        self.b = nn.Conv2d(3, 4, 3)
        self.c = nn.Conv2d(3, 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.a(x))
        z = self.b(y) if float(x.amax()) <= 0.9 else None
        out = self.c(y)
        return out if z is None else out + z[:, :2]


def _stored(net: nn.Module, dataset, spec, batch_size: int) -> dict[str, tuple[torch.Tensor, list[int]]]:
    """Each layer's outputs on the items of the batches it ran in, and those items' dataset indices."""
    got: dict[str, list] = {name: [[], []] for name in ("a", "b", "c")}
    current: list[int] = []

    def keep(name: str):
        def hook(_module, _args, out):
            got[name][0].append(out.clone())
            got[name][1].extend(current)
        return hook

    handles = [getattr(net, name).register_forward_hook(keep(name)) for name in got]
    try:
        with torch.inference_mode():
            for batch in data.batches(dataset, spec, batch_size):
                current[:] = batch.indices.tolist()
                net(batch.inputs)
    finally:
        for handle in handles:
            handle.remove()
    return {name: (torch.cat(parts), items) for name, (parts, items) in got.items()}


def _expected(acts: torch.Tensor, items: list[int], k: int) -> list[list[tuple[float, int, int, int]]]:
    """Per unit: (value, index, row, col) of its k best inputs by spatial max, ties by index (Python's sort)."""
    flat = acts.flatten(2)
    peak = flat.amax(2)
    out = []
    for unit in range(acts.shape[1]):
        order = sorted(range(len(items)), key=lambda i: (-float(peak[i, unit]), items[i]))[:k]
        width = acts.shape[3]
        out.append([(float(peak[i, unit]), items[i], int(flat[i, unit].argmax()) // width,
                     int(flat[i, unit].argmax()) % width) for i in order])
    return out


def test_a_layer_skipped_in_some_batches_keeps_its_own_items():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 200, size=(40, 10, 10), dtype=np.uint8)
    images[[5, 17, 18, 33]] = 255  # their three batches (of 4) skip `b`: a run of staged layers is split in two
    images[8:12] = 0  # a whole batch of zeros: every unit of `a` ties on its bias
    net = Branchy().eval()
    spec = dataclasses.replace(load(net), input_size=(10, 10))
    dataset = data.ArrayDataset(images, np.arange(40) % 3)
    result = analysis.scan(spec, dataset, ["a", "b", "c"], k=5, batch_size=4, shard_size=8)
    stored = _stored(net, dataset, spec, 4)
    assert len(stored["b"][1]) == 28 and len(stored["a"][1]) == 40  # the case under test did happen
    for name in ("a", "b", "c"):
        acts, items = stored[name]
        layer = result.topk[name]
        for unit, want in enumerate(_expected(acts, items, 5)):
            got = list(zip(layer.values[unit].tolist(), layer.indices[unit].tolist(), layer.rows[unit].tolist(),
                           layer.cols[unit].tolist()))
            assert got == want, (name, unit)
        stats = result.stats[name]
        assert stats.inputs == len(items)
        assert torch.allclose(stats.mean, acts.double().mean((0, 2, 3)), rtol=1e-6, atol=1e-7), name
        assert torch.allclose(stats.std, acts.double().std((0, 2, 3), unbiased=False), rtol=1e-5, atol=1e-6), name
        assert torch.equal(stats.max, acts.amax((0, 2, 3))), name
        assert torch.equal(stats.active, (acts.amax((2, 3)) > 0).sum(0)), name


def test_nan_names_layer_unit_and_item():
    class Root(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.sqrt(x)

    conv = nn.Conv2d(1, 2, 1)
    with torch.no_grad():
        conv.weight[:] = torch.tensor([1.0, -1.0])[:, None, None, None]
        conv.bias.zero_()
    net = nn.Sequential(conv, Root()).eval()
    spec = dataclasses.replace(load(net), input_size=(4, 4))
    images = np.zeros((12, 4, 4), dtype=np.uint8)
    images[7, 1, 2] = 90  # sqrt(-x) of unit 1 is NaN there and only there
    with pytest.raises(NonFiniteError, match=r"layer '1' gives NaN for unit 1 on dataset item 7"):
        analysis.scan(spec, data.ArrayDataset(images, np.zeros(12, dtype=np.int64)), ["0", "1"], k=3, batch_size=4)


def test_topk_state_does_not_depend_on_the_order_items_arrive():
    """A shard runner fed the items in descending or shuffled order keeps the same top-k as in ascending order,
    ties included (a unit tied on its bias over a batch of zeros: the later input only wins on a lower index)."""
    from convscope.analysis._collect import Plan
    from convscope.analysis._engine import ShardRunner, resolve_units, scan_layers
    from convscope.analysis._stats_state import StatsCollector
    from convscope.analysis._topk_state import TopKCollector

    torch.manual_seed(1)
    rng = np.random.default_rng(1)
    images = rng.integers(0, 200, size=(24, 10, 10), dtype=np.uint8)
    images[[2, 9, 13, 20]] = 0  # the same value for every unit of `a`, at four indices spread over the order
    net = Branchy().eval()
    with torch.no_grad():
        net.a.weight[0] = -net.a.weight[0].abs()  # unit 0: its bias on zeros, less on any other image
    spec = dataclasses.replace(load(net), input_size=(10, 10))
    dataset = data.ArrayDataset(images, np.arange(24) % 2)
    layers = resolve_units(None, scan_layers(net, spec.example_input(), ["a", "c"]))
    plan = Plan(tuple(layers), 3, "max", True, True, 4, 24, 24, "float32")
    orders = [list(range(24)), list(range(23, -1, -1)), [int(i) for i in rng.permutation(24)]]
    results = []
    for order in orders:
        collectors = [TopKCollector(3), StatsCollector()]
        with ShardRunner(spec, dataset, plan, collectors) as runner:
            results.append(runner.run_items(order)["states"])
    assert results[0]["topk"]["a"]["indices"][0].tolist() == [2, 9, 13]  # four tie; the lowest indices win
    for other in results[1:]:
        for name in ("a", "c"):
            for field in ("values", "indices", "rows", "cols", "labels", "keys"):
                assert torch.equal(other["topk"][name][field], results[0]["topk"][name][field]), (name, field)
            assert other["stats"][name]["inputs"] == 24
            assert torch.equal(other["stats"][name]["max"], results[0]["stats"][name]["max"])
            assert torch.equal(other["stats"][name]["hist"], results[0]["stats"][name]["hist"])
