"""The engine (`convscope.accel`): one probe pass, folding and pruning on the working copy only, the same render as
the plain path on real networks, and no private PyTorch API anywhere in `src/`."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from convscope import hooks
from convscope.accel import probe, pruned
from convscope.accel.prune import ZeroBranch
from convscope.featvis import channel, layer, neuron, render
from convscope.models import ModelSpec

pytestmark = pytest.mark.usefixtures("one_thread")

SRC = Path(__file__).resolve().parents[1] / "src"
PRIVATE = [
    (r"torch\._C\b", "torch._C (the C extension's private bindings)"),
    (r"\b_use_count\b", "Tensor._use_count"),
    (r"_storage_Use_Count", "torch._C._storage_Use_Count"),
    (r"torch\.ops\.aten\.", "internal aten overloads (torch.ops.aten.*)"),
    (r"\bgetrefcount\b", "sys.getrefcount (reference counts as a memory oracle)"),
    (r"torch\._(?!_)(?!version\b)\w+", "torch._-prefixed private modules and functions"),
]


def test_no_private_pytorch_api_in_src():
    found = []
    for path in sorted(SRC.rglob("*.py")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            for pattern, what in PRIVATE:
                if re.search(pattern, line):
                    found.append(f"{path.relative_to(SRC)}:{number}: {what}: {line.strip()}")
    assert not found, "private PyTorch API in src/:\n" + "\n".join(found)


def test_the_grep_would_catch_what_the_old_engine_used():
    old = ["torch.ops.aten.mkldnn_convolution(x, w, b, *_ONE, 1)", "torch._C._storage_Use_Count(t)",
           "t._use_count()", "sys.getrefcount(t)", "from torch._prims_common import x"]
    for line in old:
        assert any(re.search(pattern, line) for pattern, _ in PRIVATE), line
    assert not any(re.search(pattern, "t._version, torch.__version__") for pattern, _ in PRIVATE)


class Branches(nn.Module):
    """An Inception-style block: three branches concatenated along channels."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(8, 4, 1)
        self.b = nn.Sequential(nn.Conv2d(8, 6, 1), nn.ReLU(), nn.Conv2d(6, 5, 3, padding=1))
        self.c = nn.Sequential(nn.MaxPool2d(3, 1, 1), nn.Conv2d(8, 3, 1))

    def forward(self, x):
        return torch.cat([self.a(x), self.b(x), self.c(x)], 1)


def branchy() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), Branches(), nn.ReLU()).eval()


def test_pruning_keeps_the_read_channels_and_drops_the_other_branches():
    net = branchy()
    x = torch.rand(2, 3, 16, 16)
    with hooks.frozen(net) as work:
        seen = probe(work, x[:1], ["3"], inputs_of=["3"])
        inner = seen.inputs["3"]
        with torch.no_grad():
            full = work[3](inner)
        cut = pruned(work, "3", channel("3", [4, 8]).channels("3"), inner)
        assert set(cut) == {"3.a", "3.c"} and all(isinstance(m, ZeroBranch) for m in cut.values())
        with torch.no_grad(), hooks.swap_modules(work, cut):
            got = work[3](inner)
        assert isinstance(net[3].a, nn.Conv2d)  # the user's model keeps its branches
        torch.testing.assert_close(got[:, 4:9], full[:, 4:9])
        assert got.shape == full.shape and bool((got[:, :4] == 0).all()) and bool((got[:, 9:] == 0).all())
        assert pruned(work, "3", layer("3").channels("3"), inner) == {}  # the whole layer is read
        assert set(pruned(work, "3", (neuron("3", 0) + channel("3", 11)).channels("3"), inner)) == {"3.b"}
        assert pruned(work, "3", {0, 5, 10}, inner) == {}  # every branch is needed: nothing to gain
        assert pruned(work, "0", {1}, seen.x) == {}  # a convolution is not a concatenation
    assert type(net[3]) is Branches and hooks.hook_count(net) == 0


def test_render_with_the_engine_equals_the_plain_render_and_leaves_the_model_alone():
    net = branchy()
    spec = ModelSpec(net, "branchy", 3, (16, 16), (0.5,) * 3, (0.25,) * 3)
    modules = [id(m) for m in net.modules()]
    fast = render(spec, channel("3", [5, 6]), steps=6, size=16, param="pixel", transforms=None, precision="float32")
    plain = render(spec, channel("3", [5, 6]), steps=6, size=16, param="pixel", transforms=None, precision="float32",
                   fuse=False)
    torch.testing.assert_close(fast.images, plain.images, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fast.values, plain.values, rtol=1e-5, atol=1e-5)
    assert fast.recipe.params["pruned_layers"] == ["3"] and plain.recipe.params["pruned_layers"] == []
    assert fast.recipe.params["fused_batchnorms"] == 1 and plain.recipe.params["fused_batchnorms"] == 0
    assert [id(m) for m in net.modules()] == modules and hooks.hook_count(net) == 0


def _root_calls(spec: ModelSpec, **options) -> int:
    calls = []
    handle = spec.module.register_forward_pre_hook(lambda *_: calls.append(1))  # copied into the working copy
    try:
        render(spec, channel("3", [5, 6]), steps=4, size=16, param="pixel", transforms=None, precision="float32",
               **options)
    finally:
        handle.remove()
    return len(calls)


def test_a_render_makes_one_probe_pass_and_one_check_beyond_the_plain_path():
    spec = ModelSpec(branchy(), "branchy", 3, (16, 16), (0.5,) * 3, (0.25,) * 3)
    plain = _root_calls(spec, fuse=False)
    assert plain == 1 + 1 + 4 + 1  # probe, start values, 4 steps, final values
    assert _root_calls(spec) == plain + 1  # + the check of the folded network (was 13 against 7)
    assert _root_calls(spec) == plain  # the folding is cached while the weights are unchanged


def _random_bn(model: nn.Module) -> nn.Module:
    """BatchNorms with non-trivial statistics, so folding really changes the arithmetic."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def test_engine_render_equals_the_plain_render_on_mobilenet_v2():
    torch.manual_seed(0)
    model = _random_bn(torchvision.models.mobilenet_v2(weights=None))
    spec = ModelSpec(model, "mobilenet_v2", 3, (64, 64), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    options = dict(steps=24, size=64, param="fourier", transforms="standard", seed=0, precision="float32")
    fast = render(spec, channel("features.6", [3, 17]), **options)
    plain = render(spec, channel("features.6", [3, 17]), fuse=False, **options)
    assert fast.recipe.params["fused_batchnorms"] > 10 and plain.recipe.params["fused_batchnorms"] == 0
    assert (fast.values > fast.start_values).all()
    torch.testing.assert_close(fast.values, plain.values, rtol=1e-3, atol=1e-5)
    assert (fast.images - plain.images).abs().max() < 2e-3


def test_engine_computes_the_plain_objective_and_gradient_on_googlenet():
    """Folded stem and branches, a pruned inception3a, the phase-split stem gradient: the same values and input
    gradients as the model as written in float32; under bf16 autocast as close to the float32 gradient as the plain
    bf16 pass is (a render's trajectory is compared on MobileNetV2: GoogLeNet's max-pools turn float rounding into
    argmax ties)."""
    from convscope.accel import accelerated, network_precision

    torch.manual_seed(0)
    model = _random_bn(torchvision.models.googlenet(weights=None, aux_logits=False, init_weights=True))
    objective = channel("inception3a", [2, 70, 200])
    x = torch.randn(3, 3, 64, 64).contiguous(memory_format=torch.channels_last)

    def value_and_grad(engine: bool, precision: str, kernels: bool = True):
        with hooks.frozen(model) as net:
            with accelerated(net, x[:1], ["inception3a"], {"inception3a": objective.channels("inception3a")},
                             stop=True, fuse=engine, input_gradient=kernels) as applied, \
                    hooks.capture(net, ["inception3a"], detach=False, stop=True) as cap:
                inputs = x.clone().requires_grad_(True)
                with network_precision(precision, "cpu"):
                    cap.run(inputs)
                values = objective({"inception3a": cap["inception3a"].float()})
                (grad,) = torch.autograd.grad(values.sum(), inputs)
        return values.detach(), grad, applied

    def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
        return float(torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0))

    fast_v, fast_g, applied = value_and_grad(True, "float32")
    plain_v, plain_g, _ = value_and_grad(False, "float32")
    assert applied.fused > 5 and applied.pruned == ("inception3a",) and applied.kernels == ("conv1.conv",)
    torch.testing.assert_close(fast_v, plain_v, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(fast_g, plain_g, rtol=1e-3, atol=1e-3 * float(plain_g.abs().max()))
    _, low_g, _ = value_and_grad(True, "bf16")
    _, low_no_kernel_g, _ = value_and_grad(True, "bf16", kernels=False)
    _, low_plain_g, _ = value_and_grad(False, "bf16")
    assert low_g.dtype == torch.float32
    torch.testing.assert_close(low_g, low_no_kernel_g, rtol=1e-3, atol=1e-4 * float(low_g.abs().max()))
    assert cosine(low_g, plain_g) > cosine(low_plain_g, plain_g) - 0.05
    assert type(model.inception3a).__name__ == "Inception" and hooks.hook_count(model) == 0


@pytest.mark.parametrize("shape", [
    # (batch, channels, height, width, out, kernel, stride, padding)
    (2, 3, 32, 29, 8, 7, 2, 3),  # a GoogLeNet/ResNet stem
    (3, 1, 13, 13, 4, 3, 2, 1),
    (2, 4, 17, 20, 5, 5, 3, 2),  # odd sizes, stride 3
    (2, 3, 15, 16, 4, 4, 2, 0),  # kernel a multiple of the stride, no padding
    (1, 2, 9, 11, 3, 2, 3, 1),  # kernel smaller than the stride: phases without taps
])
def test_phase_split_gradient_equals_conv2d_in_float64(shape):
    from convscope.accel.kernels import ImageConv

    b, c, h, w, o, k, s, p = shape
    torch.manual_seed(0)
    conv = nn.Conv2d(c, o, k, stride=s, padding=p).double().requires_grad_(False)
    x = torch.randn(b, c, h, w, dtype=torch.float64, requires_grad=True)
    expected = conv(x)
    grad_out = torch.randn_like(expected)
    (expected_grad,) = torch.autograd.grad(expected, x, grad_out)
    got = ImageConv(conv)(x)
    (got_grad,) = torch.autograd.grad(got, x, grad_out)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got_grad, expected_grad, rtol=1e-12, atol=1e-12)
