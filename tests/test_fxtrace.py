"""Occlusion's fx trace stays inside the model it traces: fx patches `nn.Module.__call__` for the whole process while
it traces, and another thread running a model at that moment must not notice (issue 9: a call never touches the
user's model, not even while it runs)."""

from __future__ import annotations

import threading

import torch
import torch.fx as fx
from torch import nn

from convscope._fxtrace import trace


class CallsAnotherModelMidTrace(nn.Module):
    """While it is traced, another thread runs a model that is not part of it (as a web request would)."""

    def __init__(self, other: nn.Module) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 3)
        self.seen: dict[str, object] = {}
        self._other = [other]  # a list: not a submodule

    def forward(self, x):
        def run() -> None:
            try:
                with torch.no_grad():
                    self.seen["out"] = self._other[0](torch.ones(2, 4))
            except Exception as error:  # what plain fx.symbolic_trace does to that thread
                self.seen["error"] = error

        thread = threading.Thread(target=run)
        thread.start()
        thread.join()
        return torch.relu(self.lin(x))


def _other_model() -> tuple[nn.Module, torch.Tensor]:
    """A model another thread runs mid-trace, and what it returns when no trace is running."""
    torch.manual_seed(0)
    other = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 2))
    with torch.no_grad():
        return other, other(torch.ones(2, 4))


def test_another_thread_runs_its_model_normally_during_the_trace():
    other, expected = _other_model()
    model = CallsAnotherModelMidTrace(other)
    traced = trace(model)
    assert "error" not in model.seen and torch.equal(model.seen["out"], expected)
    assert [n.target for n in traced.graph.nodes if n.op == "call_module"] == ["lin"]  # nothing of the other's
    x = torch.randn(3, 4)
    assert torch.equal(traced(x), model(x))

    plain = CallsAnotherModelMidTrace(other)  # what the engine used to do: the other thread fails
    fx.symbolic_trace(plain)
    assert isinstance(plain.seen.get("error"), NameError)


def test_the_graph_is_symbolic_traces():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2)).eval()
    model(torch.zeros(1, 3, 8, 8))
    ours, theirs = trace(model), fx.symbolic_trace(model)
    assert str(ours.graph) == str(theirs.graph)


class ConvCallsAnotherModelMidTrace(CallsAnotherModelMidTrace):
    """A small CNN whose forward, while traced, lets another thread run an unrelated model."""

    def __init__(self, other: nn.Module) -> None:
        super().__init__(other)
        self.conv = nn.Conv2d(3, 2, 3, stride=2)

    def forward(self, x):
        super().forward(torch.zeros(1, 4))  # the other thread runs here (its result is discarded)
        return torch.relu(self.conv(x))


def test_receptive_fields_trace_leaves_other_threads_alone():
    from convscope.models import ModelSpec
    from convscope.receptive import receptive_fields

    other, expected = _other_model()
    model = ConvCallsAnotherModelMidTrace(other)
    fields = receptive_fields(ModelSpec(module=model, name="mid-trace", input_size=(9, 9), channels=3), method="analytic")
    assert "error" not in model.seen and torch.equal(model.seen["out"], expected)
    assert fields["conv"].size == (3, 3) and fields["conv"].stride == (2, 2)
