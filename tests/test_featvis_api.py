"""The featvis API after issue 9: layers resolved once (paths, modules, `Layer`s alike), render split into
objective + parameterization + `Schedule`, and `precision=` that really changes what the network runs in."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from convscope import hooks
from convscope.errors import LayerNotFoundError, OptionError
from convscope.featvis import Schedule, channel, dream, invert, layer, render
from convscope.layers import Layer, resolve
from convscope.models import ModelSpec

pytestmark = pytest.mark.usefixtures("one_thread")


def small() -> ModelSpec:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 8, 3, padding=1), nn.ReLU()).eval()
    return ModelSpec(net, "small", 3, (16, 16), (0.5,) * 3, (0.25,) * 3)


OPTIONS = dict(steps=4, size=16, param="pixel", transforms=None, precision="float32")


def test_a_layer_given_as_a_path_a_module_or_a_layer_renders_the_same():
    spec = small()
    by_path = render(spec, channel("2", [1, 5]), **OPTIONS)
    by_module = render(spec, channel(spec.module[2], [1, 5]), **OPTIONS)
    by_layer = render(spec, channel(resolve(spec.module, "2"), [1, 5]), **OPTIONS)
    assert torch.equal(by_path.images, by_module.images) and torch.equal(by_path.images, by_layer.images)
    assert by_module.recipe.params["objective"] == "2:[1, 5]"


def test_resolve_makes_one_value_and_names_bad_layers():
    net = small().module
    found = resolve(net, "3#0")
    assert found == Layer("3", 0, net[3]) and found.name == "3#0" and found.module is net[3]
    assert resolve(net, net[2]).name == "2"
    with pytest.raises(LayerNotFoundError, match="not part of"):
        resolve(net, nn.ReLU())
    with pytest.raises(LayerNotFoundError, match="'4'"):
        resolve(net, "4")


def test_every_entry_point_takes_layer_and_dream_still_takes_layer_name():
    spec = small()
    photo = torch.rand(3, 16, 16)
    new = dream(spec, photo, layer=spec.module[2], octaves=1, steps=2, tile=None, precision="float32")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        old = dream(spec, photo, layer_name="2", octaves=1, steps=2, tile=None, precision="float32")
    assert any(issubclass(w.category, DeprecationWarning) for w in caught)
    assert torch.equal(new.images, old.images)
    inverted = invert(spec, photo, layer=spec.module[2], steps=3, precision="float32")
    assert inverted.recipe.params["layer"] == "2"


def test_schedule_fields_are_keywords_too_and_unknown_ones_are_refused():
    spec = small()
    plan = Schedule(steps=3, size=16, transforms=None, seed=4)
    a = render(spec, layer("2"), param="pixel", schedule=plan, precision="float32")
    b = render(spec, layer("2"), param="pixel", steps=3, size=16, transforms=None, seed=4, precision="float32")
    assert torch.equal(a.images, b.images) and a.recipe.params["seed"] == 4
    c = render(spec, layer("2"), param="pixel", schedule=plan, seed=5, precision="float32")  # a keyword wins
    assert c.recipe.params["seed"] == 5 and not torch.equal(a.images, c.images)
    with pytest.raises(TypeError, match="'octave'.*octaves"):
        render(spec, layer("2"), octave=2)


def test_precision_sets_what_the_network_runs_in_and_the_recipe_says_so():
    spec = small()
    seen: list[torch.dtype] = []
    handle = spec.module[2].register_forward_hook(lambda _m, _a, out: seen.append(out.dtype))  # runs on the copy
    try:
        low = render(spec, channel("2", [1, 5]), **{**OPTIONS, "precision": "bf16"})
        ran_low, seen[:] = set(seen), []
        full = render(spec, channel("2", [1, 5]), **OPTIONS)
    finally:
        handle.remove()
    assert torch.bfloat16 in ran_low and set(seen) == {torch.float32}
    assert low.recipe.params["precision"] == "bf16" and full.recipe.params["precision"] == "float32"
    assert low.values.dtype == torch.float32 and low.images.dtype == torch.float32
    assert (low.values > low.start_values).all()  # ascent still works in bf16
    with pytest.raises(OptionError, match="auto, float32, bf16"):
        render(spec, channel("2", 1), precision="fp16")
    assert hooks.hook_count(spec.module) == 0
