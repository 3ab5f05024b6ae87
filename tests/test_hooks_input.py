"""capture(model, ["PATH:input"]): what goes INTO a module, recorded with the same guarantees as outputs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from convscope.errors import LayerNotFoundError
from convscope.hooks import capture, frozen, hook_count

pytestmark = pytest.mark.usefixtures("one_thread")


class Net(nn.Module):
    """The classifier reads a tensor made by functional code (no module outputs it): only its input shows it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, 2)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(x)).amax(dim=(2, 3)) * 2.0 - 1.0
        self.calls += 1
        return self.fc(h)


def _by_hand(model: Net, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.relu(model.conv(x)).amax(dim=(2, 3)) * 2.0 - 1.0


def test_input_equals_what_the_module_receives_and_mixes_with_outputs():
    model = Net()
    x = torch.randn(5, 3, 8, 8)
    with capture(model, ["fc:input", "conv", "fc"]) as cap:
        out = model(x)
    torch.testing.assert_close(cap["fc:input"], _by_hand(model, x), rtol=0, atol=0)
    torch.testing.assert_close(cap["fc"], out.detach(), rtol=0, atol=0)
    assert cap["conv"].shape == (5, 4, 6, 6)
    assert hook_count(model) == 0


def test_stop_at_an_input_skips_the_module_itself():
    model = Net()
    x = torch.randn(2, 3, 8, 8)
    with frozen(model) as module, capture(module, ["fc:input"], stop=True) as cap:
        cap.run(x)  # the first pass runs fully to learn call counts
        first = cap["fc:input"]
        ran = []
        handle = module.fc.register_forward_hook(lambda *_: ran.append(1))
        try:
            assert cap.run(x) is None and cap.stopped
        finally:
            handle.remove()
        assert ran == []  # the linear layer itself never ran on the stopped pass
        torch.testing.assert_close(cap["fc:input"], first, rtol=0, atol=0)
    assert hook_count(model) == 0


def test_input_gradients_and_errors():
    model = Net()
    x = torch.randn(3, 3, 8, 8)
    with capture(model, ["fc:input"], gradients=True) as cap:
        model(x).sum().backward()
    # d(sum of fc outputs)/d(fc input) = column sums of the weight, for every item
    torch.testing.assert_close(cap.gradients["fc:input"], model.fc.weight.sum(0).expand(3, -1))
    with pytest.raises(LayerNotFoundError, match="fc"):
        with capture(model, ["fcc:input"]):
            pass
    assert hook_count(model) == 0
