"""True, not only pretty: on the built-in Fashion-MNIST CNN, the visualization of every conv channel that fires on
any test image excites that channel (its mean, the objective) more than every one of the 10,000 test images does,
and no such channel is reported dead."""

from __future__ import annotations

import pytest
import torch

from convscope import hooks
from convscope.errors import ModelLoadError
from convscope.featvis import channel, render

LAYERS = ("conv1", "conv2")


@pytest.fixture(scope="module")
def fashion():
    from convscope.data import batches, resolve
    from convscope.models import load

    try:
        spec = load("convscope:fashion-cnn")
    except ModelLoadError as error:  # the shipped weights are built by `convscope train`; see models/weights
        pytest.skip(f"built-in fashion-cnn not available: {error}")
    dataset = resolve("fashion-mnist", split="test")
    assert len(dataset) == 10_000
    best: dict[str, torch.Tensor] = {}
    fires: dict[str, torch.Tensor] = {}
    with torch.no_grad(), hooks.frozen(spec.module), hooks.capture(spec.module, list(LAYERS)) as cap:
        for batch in batches(dataset, spec, 1000):
            spec.module(batch.inputs)
            for name in LAYERS:
                a = cap[name]
                means, positive = a.mean((2, 3)).amax(0), a.amax((0, 2, 3)) > 0
                best[name] = torch.maximum(best[name], means) if name in best else means
                fires[name] = fires[name] | positive if name in fires else positive
    assert hooks.hook_count(spec.module) == 0
    return spec, best, fires


@pytest.mark.slow
@pytest.mark.parametrize("name", LAYERS)
def test_rendered_channels_beat_every_test_image(fashion, name):
    spec, best, fires = fashion
    units = torch.nonzero(fires[name]).flatten().tolist()
    assert len(units) >= fires[name].numel() // 2
    vis = render(spec, channel(name, units), steps=256, seed=0)  # the defaults; one batched run per layer
    assert vis.recipe.params["param"] == "pixel"  # "auto" at 28 x 28
    natural = best[name][units]
    losers = [(u, round(float(v), 3), round(float(n), 3)) for u, v, n in zip(units, vis.values, natural) if v <= n]
    assert not losers, f"{name}: (unit, rendered, best test image) {losers}"
    assert vis.dead == []
    assert hooks.hook_count(spec.module) == 0
