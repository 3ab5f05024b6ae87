"""Every gradient method equals Captum's implementation on the same models and inputs (Captum is a test-only oracle).

Difference measure: max |ours - captum| / max |captum| over the whole batch, required below 1e-4.

Like with like: Captum's GuidedBackprop/Deconvolution hook `nn.ReLU` modules only. Our default rule
(`rectifiers="all"`) also covers clipped ReLUs (ReLU6); for MobileNetV2, which has only ReLU6, the oracle is Captum
with the same hook also registered on `nn.ReLU6` modules.
"""

from __future__ import annotations

import pytest
import torch
import torchvision
from captum._utils.common import _register_backward_hook
from captum.attr import (Deconvolution, GuidedBackprop, GuidedGradCam, IntegratedGradients, LayerAttribution,
                         LayerGradCam, NoiseTunnel, Saliency)
from torch import nn

import convscope.attribution as A
from convscope.hooks import hook_count

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

TOL = 1e-4


class SmallCNN(nn.Module):
    def __init__(self, classes: int = 7) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(inplace=True),
            nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, classes))

    def forward(self, x):
        return self.head(self.pool(self.features(x)))


def _models():
    torch.manual_seed(0)
    small = SmallCNN().double().eval()
    resnet = torchvision.models.resnet18(num_classes=10).eval()
    mobilenet = torchvision.models.mobilenet_v2(num_classes=10).eval()
    with torch.no_grad():  # non-trivial batch-norm statistics, so eval-mode BN is not the identity
        for model in (small, resnet, mobilenet):
            for m in model.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.running_mean.uniform_(-0.2, 0.2)
                    m.running_var.uniform_(0.5, 1.5)
                    m.bias.uniform_(-0.1, 0.1)
    return {"small": (small, "features"), "resnet18": (resnet, "layer4"), "mobilenet_v2": (mobilenet, "features")}


MODELS = _models()
NAMES = list(MODELS)
CLIPPED = {"mobilenet_v2"}


def _inputs(name: str) -> torch.Tensor:
    model = MODELS[name][0]
    dtype = next(model.parameters()).dtype
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1), dtype=dtype)


def rel(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    ours, theirs = ours.detach().double(), theirs.detach().double()
    return float((ours - theirs).abs().max() / theirs.abs().max().clamp_min(1e-30))


class _AlsoReLU6:
    """Mixin: Captum's ReLU hook registered on ReLU6 modules too (our rectifiers='all')."""

    def _register_hooks(self, module):
        if isinstance(module, (nn.ReLU, nn.ReLU6)):
            self.backward_hooks.extend(_register_backward_hook(module, self._backward_hook, self))


class GuidedAll(_AlsoReLU6, GuidedBackprop):
    pass


class DeconvAll(_AlsoReLU6, Deconvolution):
    pass


def _captum_guided(name, model):
    return GuidedAll(model) if name in CLIPPED else GuidedBackprop(model)


def _captum_deconv(name, model):
    return DeconvAll(model) if name in CLIPPED else Deconvolution(model)


TARGETS = [3, 5]


@pytest.mark.parametrize("name", NAMES)
def test_saliency_equals_captum(name):
    model, _ = MODELS[name]
    x = _inputs(name)
    ours = A.saliency(model, x, target=TARGETS)
    theirs = Saliency(model).attribute(x.clone().requires_grad_(), target=TARGETS, abs=False)
    assert rel(ours.attributions, theirs) < TOL
    assert torch.allclose(ours.map, theirs.abs().amax(1), rtol=1e-4, atol=1e-7 * float(theirs.abs().max()))
    assert hook_count(model) == 0


@pytest.mark.parametrize("name", NAMES)
def test_guided_backprop_equals_captum(name):
    model, _ = MODELS[name]
    x = _inputs(name)
    ours = A.guided_backprop(model, x, target=TARGETS)
    theirs = _captum_guided(name, model).attribute(x.clone().requires_grad_(), target=TARGETS)
    assert rel(ours.attributions, theirs) < TOL
    plain = A.saliency(model, x, target=TARGETS).attributions
    assert rel(ours.attributions, plain) > 1e-2  # the rule did change something
    assert hook_count(model) == 0


@pytest.mark.parametrize("name", NAMES)
def test_deconvnet_equals_captum(name):
    model, _ = MODELS[name]
    x = _inputs(name)
    ours = A.deconvnet(model, x, target=TARGETS)
    theirs = _captum_deconv(name, model).attribute(x.clone().requires_grad_(), target=TARGETS)
    assert rel(ours.attributions, theirs) < TOL
    assert hook_count(model) == 0


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("upsample", ["bilinear", "nearest"])
def test_gradcam_equals_captum(name, upsample):
    model, layer = MODELS[name]
    x = _inputs(name)
    ours = A.gradcam(model, x, target=TARGETS, upsample=upsample)
    assert ours.recipe.params["layer"] == layer  # the default: last spatial layer
    cam = LayerGradCam(model, model.get_submodule(layer)).attribute(x, target=TARGETS, relu_attributions=True)
    theirs = LayerAttribution.interpolate(cam, tuple(x.shape[2:]), interpolate_mode=upsample)
    assert rel(ours.extras["cam"], cam) < TOL
    assert rel(ours.attributions, theirs) < TOL
    signed = A.gradcam(model, x, target=TARGETS, relu=False).extras["cam"]
    assert rel(signed, LayerGradCam(model, model.get_submodule(layer)).attribute(x, target=TARGETS)) < TOL


@pytest.mark.parametrize("name", NAMES)
def test_guided_gradcam_equals_captum(name):
    model, layer = MODELS[name]
    x = _inputs(name)
    ours = A.guided_gradcam(model, x, target=TARGETS)
    captum = GuidedGradCam(model, model.get_submodule(layer))
    captum.guided_backprop = _captum_guided(name, model)
    theirs = captum.attribute(x.clone().requires_grad_(), target=TARGETS, interpolate_mode="bilinear")
    assert rel(ours.attributions, theirs) < TOL
    assert hook_count(model) == 0


@pytest.mark.parametrize("name, quadrature", [(n, "gausslegendre") for n in NAMES] + [
    ("small", q) for q in ("riemann_trapezoid", "riemann_middle", "riemann_left", "riemann_right")])
def test_integrated_gradients_equals_captum(name, quadrature):
    model, _ = MODELS[name]
    x = _inputs(name)
    baseline = 0.3 * torch.randn(x.shape[1:], generator=torch.Generator().manual_seed(2), dtype=x.dtype)
    # Chunks of 2 for both: every forward here has the batch shape of the other tests (CPU kernels warm up per shape).
    ours = A.integrated_gradients(model, x, target=TARGETS, baseline=baseline, steps=8, method=quadrature,
                                  internal_batch_size=2)
    theirs = IntegratedGradients(model).attribute(x, baselines=baseline.expand_as(x), target=TARGETS, n_steps=8,
                                                  method=quadrature, internal_batch_size=2)
    if quadrature == "riemann_trapezoid":
        # Captum's trapezoid puts n points on [0, 1] (spacing 1/(n-1)) but weighs them 1/n (ends 1/2n): its weights
        # sum to (n-1)/n. Ours are the textbook 1/(n-1) (ends halved), so ours = Captum's * n/(n-1).
        theirs = theirs * 8 / 7
    assert rel(ours.attributions, theirs) < TOL


@pytest.mark.parametrize("name", NAMES)
def test_smoothgrad_equals_captum_with_the_same_noise(name):
    model, _ = MODELS[name]
    x = _inputs(name)
    samples, stdev = 4, 0.2
    torch.manual_seed(123)
    theirs = NoiseTunnel(Saliency(model)).attribute(x, nt_type="smoothgrad", nt_samples=samples, stdevs=stdev,
                                                    nt_samples_batch_size=1, target=TARGETS, abs=False)
    # With one sample per batch, Captum draws a (B, C, H, W) normal tensor per sample, in sample order; redraw them.
    torch.manual_seed(123)
    noise = torch.stack([torch.normal(0, torch.tensor(stdev).repeat(tuple(x.shape))) for _ in range(samples)], 1)
    ours = A.smoothgrad(model, x, target=TARGETS, noise=noise.to(x.dtype), batch_size=2)
    assert rel(ours.attributions, theirs) < TOL
