"""No call touches the user's model, not even while it runs: a render and Grad-CAM in one thread while another
thread keeps checking the model's modules, hooks, flags and outputs (issue 9; STYLE.md rule 6)."""

from __future__ import annotations

import threading

import pytest
import torch
from torch import nn

import convscope.attribution as A
from convscope import hooks
from convscope.featvis import channel, render
from convscope.models import ModelSpec

pytestmark = pytest.mark.usefixtures("one_thread")


def model_in_a_mixed_state() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(8, 12, 3, padding=1), nn.BatchNorm2d(12), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, 5))
    with torch.no_grad():
        for bn in (net[1], net[5]):
            bn.running_mean.uniform_(-0.3, 0.3)
            bn.running_var.uniform_(0.5, 2.0)
    net.eval()
    net[0].train()  # a flag only (a conv computes the same in both modes): frozen must not clear it
    net[4].weight.requires_grad_(False)  # mixed requires_grad: frozen must not change either kind
    return net


def state(net: nn.Module) -> tuple:
    return ([(name, id(m), m.training) for name, m in net.named_modules()],
            [(name, id(p), p.requires_grad) for name, p in net.named_parameters()], hooks.hook_count(net))


def test_render_and_gradcam_never_change_the_model_while_they_run():
    net = model_in_a_mixed_state()
    spec = ModelSpec(net, "mixed", 3, (32, 32), (0.5,) * 3, (0.25,) * 3)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        reference = net(x)
    before = state(net)
    done, problems, checks = threading.Event(), [], [0]

    def watch() -> None:
        while not done.is_set():
            now = state(net)
            if now != before:
                problems.append(f"state changed: {now}")
            try:
                with torch.no_grad():
                    out = net(x)
            except Exception as error:  # e.g. a process-wide patch of nn.Module (torch.fx tracing) reaching us
                problems.append(f"the model failed while a call ran: {error!r}")
                return
            if not torch.equal(out, reference):
                problems.append(f"output changed by {float((out - reference).abs().max())}")
            checks[0] += 1
            if problems:
                return

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        vis = render(spec, channel("4", [0, 5]), steps=48, size=32, precision="float32")
        for _ in range(4):
            cam = A.gradcam(spec, x, 1, layer="4")
        # the summed-gradient path (hooks at the first convolution) and bf16 occlusion act on the working copy too
        ig = A.integrated_gradients(spec, x, 1, steps=8)
        A.smoothgrad(spec, x, 1, samples=4)
        A.occlusion(spec, x, 1, window=8, stride=8, precision="bf16")
    finally:
        done.set()
        watcher.join()
    assert not problems, problems[0]
    assert checks[0] >= 5, "the watcher must have run while the calls did"
    assert vis.recipe.params["fused_batchnorms"] == 1 and cam.map.shape == (2, 32, 32)
    assert ig.attributions.shape == x.shape
    assert state(net) == before
