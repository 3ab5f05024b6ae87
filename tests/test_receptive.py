"""Receptive fields: analytic values equal the textbook recurrence computed here by hand, and equal the support of
the input gradient (computed here independently) on chains where every weight is positive."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from convscope.errors import AmbiguousLayerError, ConvscopeError, LayerNotFoundError
from convscope.hooks import hook_count
from convscope.receptive import receptive_field, receptive_fields


def recurrence(layers: list[tuple[int, int, int]]) -> tuple[int, int, int]:
    """(kernel, stride, padding) per layer -> (size, jump, start), the standard recurrence
    r += (k - 1) * j; start -= p * j; j *= s (Araujo et al., "Computing receptive fields of CNNs", 2019)."""
    size, jump, start = 1, 1, 0
    for k, s, p in layers:
        size += (k - 1) * jump
        start -= p * jump
        jump *= s
    return size, jump, start


def test_vgg_like_chain_by_hand():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 4, 3, padding=1))
    fields = receptive_fields(model, input_size=(32, 32))
    assert fields["0"].size == (3, 3) and fields["2"].size == (4, 4) and fields["3"].size == (8, 8)
    for name, chain in {"0": [(3, 1, 1)], "2": [(3, 1, 1), (2, 2, 0)], "3": [(3, 1, 1), (2, 2, 0), (3, 1, 1)]}.items():
        size, jump, start = recurrence(chain)
        assert fields[name].size == (size, size)
        assert fields[name].stride == (jump, jump)
        assert fields[name].offset == (start, start)
        assert fields[name].method == "analytic"
    assert fields["1"] == fields["0"]  # a ReLU changes nothing


def _positive_chain() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(2, 3, (3, 5), stride=(1, 2), padding=(1, 0)), nn.ReLU(),
        nn.AvgPool2d(2), nn.Conv2d(3, 3, 3, dilation=2, padding=1), nn.SiLU(),
        nn.Conv2d(3, 2, 1), nn.AvgPool2d(3, stride=2, padding=1),
    ).double()
    with torch.no_grad():
        for m in model:
            if isinstance(m, nn.Conv2d):
                m.weight.uniform_(0.1, 1.0)
                m.bias.fill_(0.1)
    return model


def _gradient_box(model: nn.Module, layer: int, row: int, col: int, size=(64, 64)) -> tuple[int, int, int, int]:
    """Bounding box (top, left, bottom, right; exclusive) of the nonzero input gradient of one unit, computed
    directly with autograd (positive weights and inputs: no cancellation, no dead ReLU)."""
    x = torch.rand(1, 2, *size, dtype=torch.float64, requires_grad=True)
    out = model[: layer + 1](x)
    (grad,) = torch.autograd.grad(out[0, :, row, col].sum(), x)
    rows = torch.nonzero(grad.abs().sum(dim=(0, 1, 3))).flatten()
    cols = torch.nonzero(grad.abs().sum(dim=(0, 1, 2))).flatten()
    return int(rows.min()), int(cols.min()), int(rows.max()) + 1, int(cols.max()) + 1


def test_analytic_equals_measured_and_gradient_support():
    model = _positive_chain()
    analytic = receptive_fields(model, input_size=(64, 64), method="analytic")
    measured = receptive_fields(model, input_size=(64, 64), method="measured")
    for name in ("0", "2", "3", "5", "6"):
        a, m = analytic[name], measured[name]
        assert m.method == "measured" and a.method == "analytic"
        assert (a.size, a.stride, a.offset) == (m.size, m.stride, m.offset), name
    # a unit away from the centre and the border: the box predicted from offset + stride is the gradient's box
    for layer, (row, col) in {3: (4, 3), 6: (3, 2)}.items():
        assert analytic[str(layer)].box(row, col) == _gradient_box(model, layer, row, col)
    assert hook_count(model) == 0


def test_non_square_kernels_give_different_heights_and_widths():
    model = nn.Sequential(nn.Conv2d(1, 2, (1, 5)), nn.Conv2d(2, 2, (3, 1), stride=(2, 1)), nn.Conv2d(2, 2, (3, 1)))
    fields = receptive_fields(model, input_size=(20, 24))
    assert fields["0"].size == (1, 5)
    assert fields["1"].size == (3, 5) and fields["1"].stride == (2, 1)
    assert fields["2"].size == (3 + 2 * 2, 5)


def test_resnet18_layer4_matches_the_recurrence():
    model = torchvision.models.resnet18()
    stem = [(7, 2, 3), (3, 2, 1)]
    stages = []
    for stride in (1, 2, 2, 2):  # the longest path: two 3x3 convs per BasicBlock, two blocks per stage
        stages += [(3, stride, 1), (3, 1, 1), (3, 1, 1), (3, 1, 1)]
    size, jump, start = recurrence(stem + stages)
    assert size == 435  # the value usually quoted for ResNet-18
    fields = receptive_fields(model, layers=["layer4", "layer1.0.relu#0", "layer1.0.relu#1"], input_size=(32, 32))
    field = fields["layer4"]
    assert field.size == (size, size) and field.stride == (jump, jump) and field.offset == (start, start)
    assert field.method == "analytic"
    # each call of the reused ReLU gets its own field: after conv1 of the block, then after the residual sum
    first, second = fields["layer1.0.relu#0"], fields["layer1.0.relu#1"]
    assert first.size == (recurrence(stem + [(3, 1, 1)])[0],) * 2
    assert second.size == (recurrence(stem + [(3, 1, 1), (3, 1, 1)])[0],) * 2
    assert hook_count(model) == 0


class Branches(nn.Module):
    """Inception-like concat of a 3x3 and a 5x5 branch, a residual add, and an SE-like global gate."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 2, 3, padding=1)
        self.b = nn.Conv2d(3, 2, 5, padding=2)
        self.mix = nn.Conv2d(4, 4, 1)
        self.gate = nn.AdaptiveAvgPool2d(1)
        self.up = nn.Upsample(scale_factor=2)

    def forward(self, x):
        y = torch.cat([self.a(x), self.b(x)], dim=1)
        y = self.mix(y) + y
        z = y * torch.sigmoid(self.gate(y))
        return self.up(F.max_pool2d(z, 2))


def test_concat_add_gate_and_unknown_ops():
    model = Branches().double()
    fields = receptive_fields(model, input_size=(16, 16))
    assert fields["mix"].size == (5, 5)  # union of the 3x3 and 5x5 branches
    assert not fields["mix"].uniform
    assert fields["gate"].uniform and fields["gate"].size == (16 + 4, 16 + 4)  # all units of a 5x5 field
    up = fields["up"]  # upsampling has no rule: measured, and says why
    assert up.method == "measured" and "Upsample" in up.note
    assert fields["a"].method == "analytic"


def test_addressing_errors():
    model = torchvision.models.resnet18()
    with pytest.raises(AmbiguousLayerError, match="layer1.0.relu#1"):
        receptive_field(model, "layer1.0.relu", input_size=(32, 32))
    with pytest.raises(LayerNotFoundError, match="layer4"):
        receptive_field(model, "layer44", input_size=(32, 32))
    with pytest.raises(LayerNotFoundError, match="#0..#1"):
        receptive_field(model, "layer1.0.relu#5", input_size=(32, 32))


def test_model_left_as_found_after_measuring():
    model = _positive_chain().float()
    model.train()
    model[0].weight.requires_grad_(False)
    flags = [m.training for m in model.modules()]
    grads = [p.requires_grad for p in model.parameters()]
    weights = [p.detach().clone() for p in model.parameters()]
    receptive_fields(model, input_size=(24, 24), method="measured")
    assert flags == [m.training for m in model.modules()]
    assert grads == [p.requires_grad for p in model.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(weights, model.parameters()))
    assert all(p.dtype == torch.float32 and p.grad is None for p in model.parameters())
    assert hook_count(model) == 0


class DataDependent(nn.Module):
    """Control flow on tensor values: torch.fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x):
        y = self.conv(x)
        if y.sum() > 1e9:
            y = -y
        return self.pool(y)


def test_untraceable_model_is_measured_and_says_so():
    model = DataDependent().double()
    fields = receptive_fields(model, input_size=(20, 20))
    assert fields["conv"].method == "measured" and "torch.fx" in fields["conv"].note
    assert (fields["conv"].size, fields["conv"].stride, fields["conv"].offset) == ((3, 3), (1, 1), (0, 0))
    assert fields["pool"].size == (4, 4) and fields["pool"].stride == (2, 2)
    with pytest.raises(ConvscopeError, match="method='measured'"):
        receptive_fields(model, input_size=(20, 20), method="analytic")
    assert hook_count(model) == 0


@pytest.mark.slow
def test_analytic_equals_measured_on_mobilenet_v2():
    """Depthwise convs, ReLU6, residual adds: the traced rules agree with gradients on a real architecture."""
    model = torchvision.models.mobilenet_v2()
    layers = ["features.1", "features.3", "features.5"]
    analytic = receptive_fields(model, layers=layers, input_size=(48, 48))
    measured = receptive_fields(model, layers=layers, input_size=(48, 48), method="measured")
    for name in layers:
        a, m = analytic[name], measured[name]
        assert (a.size, a.stride, a.offset) == (m.size, m.stride, m.offset), name
        assert a.method == "analytic" and m.method == "measured" and not m.note
