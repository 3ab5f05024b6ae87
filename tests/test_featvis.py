"""Feature visualization engine: objectives, parameterizations, transforms, update rules, render() properties."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from convscope import hooks
from convscope.errors import ConvscopeError, UnitOutOfRangeError
from convscope.featvis import (
    OUTPUT,
    FourierParam,
    channel,
    class_logit,
    custom,
    direction,
    diversity,
    layer,
    neuron,
    render,
)
from convscope.featvis.params import make_param
from convscope.featvis.render import _objective_grad, _Runner, item_generators, octave_sizes, parse_bytes
from convscope.featvis.steps import Ascent, laplacian_normalize
from convscope.featvis.transforms import Transforms, jitter, rotate, scale
from convscope.models import ModelSpec


def tiny(channels: int = 3, classes: int = 5) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(channels, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 12, 3, padding=1), nn.BatchNorm2d(12),
        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, classes),
    ).eval()


def spec_of(model: nn.Module, channels: int = 3, size=(24, 24)) -> ModelSpec:
    mean = (0.4,) * channels
    return ModelSpec(model, "tiny", channels, size, mean, (0.25,) * channels, class_names=[f"c{i}" for i in range(5)])


# ---------------------------------------------------------------------------------------------------- objectives
def test_algebra_matches_manual_combination():
    acts = {"a": torch.randn(3, 4, 5, 6), "b": torch.randn(3, 7)}
    obj = 0.5 * channel("a", 3) - channel("a", [0, 1, 2]) + neuron("b", 2) / 4
    expected = 0.5 * acts["a"][:, 3].mean((1, 2)) - acts["a"][[0, 1, 2], [0, 1, 2]].mean((1, 2)) + acts["b"][:, 2] / 4
    torch.testing.assert_close(obj(acts), expected)
    assert obj.batch == 3 and set(obj.layers) == {"a", "b"}
    torch.testing.assert_close((-obj)(acts), -expected)
    assert sum([channel("a", 1), channel("a", 2)]).layers == ("a",)


@pytest.mark.parametrize("bad", [lambda o: o + 1, lambda o: o * o, lambda o: "x" * o, lambda o: o - 2.0,
                                 lambda o: o * True, lambda o: bool(o)])
def test_algebra_rejects_everything_else(bad):
    with pytest.raises(TypeError):
        bad(channel("a", 1))


def test_batched_objectives_of_different_sizes_do_not_combine():
    with pytest.raises(ValueError):
        channel("a", [1, 2]) + channel("a", [1, 2, 3])


def test_neuron_indexes_rows_and_columns_of_non_square_maps():
    a = torch.arange(2 * 3 * 5 * 8, dtype=torch.float32).view(2, 3, 5, 8)
    assert torch.equal(neuron("a", 1)({"a": a}), a[:, 1, 2, 4])  # centre: (H // 2, W // 2)
    assert torch.equal(neuron("a", 2, 4, 7)({"a": a}), a[:, 2, 4, 7])
    assert torch.equal(neuron("a", [0, 2], 1, 6)({"a": a}), torch.stack([a[0, 0, 1, 6], a[1, 2, 1, 6]]))


def test_layer_direction_class_and_diversity_values():
    a = torch.randn(2, 3, 4, 4)
    torch.testing.assert_close(layer("a")({"a": a}), a.pow(2).mean((1, 2, 3)))
    v = torch.tensor([1.0, -2.0, 0.5])
    torch.testing.assert_close(direction("a", v)({"a": a}), (a * v.view(1, 3, 1, 1)).sum(1).mean((1, 2)))
    logits = torch.randn(2, 5)
    assert torch.equal(class_logit(3)({OUTPUT: logits}), logits[:, 3])
    same = a[:1].expand(3, -1, -1, -1)
    torch.testing.assert_close(diversity("a")({"a": same}), torch.full((3,), -1.0))
    assert diversity("a")({"a": a[:1]}).item() == 0


def test_unit_out_of_range_is_a_clear_error_and_leaves_no_hooks():
    model = tiny()
    with pytest.raises(UnitOutOfRangeError, match="0..11"):
        render(spec_of(model), channel("2", 12), steps=2)
    with pytest.raises(ConvscopeError, match="not a class"):
        render(spec_of(model), class_logit("nope"), steps=2)
    assert hooks.hook_count(model) == 0


# --------------------------------------------------------------------------------------------- parameterizations
@pytest.mark.parametrize("channels", [1, 3, 5])
@pytest.mark.parametrize("size", [(16, 16), (15, 22)])
def test_fourier_set_pixels_round_trips(channels, size):
    gens = item_generators(0, range(2))
    param = make_param("fourier", gens, channels, size, dtype=torch.float64)
    target = torch.rand(2, channels, *size, dtype=torch.float64) * 0.9 + 0.05
    param.set_pixels(target)
    torch.testing.assert_close(param(), target, atol=1e-9, rtol=0)
    pixels = make_param("fourier", gens, channels, size)()
    assert pixels.shape == (2, channels, *size) and 0 <= pixels.min() and pixels.max() <= 1


def test_parameterization_constants_are_buffers():
    param = FourierParam(torch.zeros(1, 3, 8, 5, 2), (8, 8))
    names = {n for n, _ in param.named_buffers()}
    assert {"scale", "color"} <= names and [n for n, _ in param.named_parameters()] == ["spectrum"]
    assert param.double().scale.dtype == torch.float64


# ---------------------------------------------------------------------------------------------------- transforms
def test_transforms_are_seeded_per_item_and_jitter_shifts_exactly():
    x = torch.rand(3, 2, 12, 16)
    chain = Transforms([jitter(3), scale(), rotate()])
    a = chain(x, item_generators(5, range(3)))
    b = chain(x, item_generators(5, range(3)))
    assert torch.equal(a, b)
    alone = chain(x[1:2], item_generators(5, [1]))
    torch.testing.assert_close(alone, a[1:2])  # an item transforms the same alone or in a batch
    shifted = Transforms([jitter(3)], fill=0.0)(x, item_generators(1, [0, 0, 0]))
    for dy in range(-3, 4):  # find the drawn shift: it must be an exact integer translation
        for dx in range(-3, 4):
            rolled = torch.roll(x, (-dy, -dx), (2, 3))[..., 3:-3, 3:-3]
            if torch.allclose(shifted[..., 3:-3, 3:-3], rolled, atol=1e-5):
                return
    pytest.fail("jitter is not an integer translation")


def test_rotation_keeps_orientation_and_aspect():
    x = torch.zeros(1, 1, 9, 9)
    x[..., 0, 4] = 1  # a dot at the top centre
    turned = Transforms([rotate([90])], fill=0.0)(x, item_generators(0, [0]))
    assert turned.abs().sum() > 0.9 and turned[0, 0].flatten().argmax().item() in (4 * 9 + 0, 4 * 9 + 8)


# ---------------------------------------------------------------------------------------------------- update rules
def test_laplacian_normalization_is_scale_invariant_and_ascent_is_maxabs_normalized():
    g = torch.randn(2, 3, 32, 24)
    torch.testing.assert_close(laplacian_normalize(g * torch.tensor([10.0, 0.1]).view(2, 1, 1, 1)),
                               laplacian_normalize(g), atol=1e-5, rtol=1e-4)
    p = torch.zeros(2, 3, 4, 4)
    Ascent([p], lr=0.5)([torch.randn(2, 3, 4, 4) * torch.tensor([100.0, 0.01]).view(2, 1, 1, 1)])
    torch.testing.assert_close(p.abs().flatten(1).amax(1), torch.tensor([0.5, 0.5]))


# ------------------------------------------------------------------------------------------------ render properties
OBJECTIVES = {
    "neuron": neuron("2", 3),
    "channel": channel("2", [1, 4, 7]),
    "layer": layer("1"),
    "class": class_logit(2),
    "direction": direction("4", torch.linspace(-1, 1, 12)),
    "diversity": channel("2", [1, 4]) + 0.1 * diversity("2"),
}


@pytest.mark.parametrize("name", list(OBJECTIVES))
@pytest.mark.parametrize("param,optimizer", [("fourier", "adam"), ("pixel", "ascent"), ("pixel", "laplacian"),
                                             ("pixel", "smooth")])
def test_gradient_ascent_raises_every_objective(name, param, optimizer):
    model = tiny()
    vis = render(spec_of(model), OBJECTIVES[name], param=param, optimizer=optimizer, steps=24, size=(20, 28),
                 transforms="standard")
    assert (vis.values > vis.start_values).all(), (vis.start_values, vis.values)
    n = vis.trace.shape[0]
    assert (vis.trace[-n // 4:].mean(0) > vis.trace[: n // 4].mean(0)).all()  # monotone on average
    assert vis.images.shape[-2:] == (20, 28) and 0 <= vis.images.min() and vis.images.max() <= 1
    assert hooks.hook_count(model) == 0


def test_same_seed_same_image_bit_for_bit_and_seeds_differ():
    model = tiny()
    a = render(spec_of(model), channel("2", [0, 1]), steps=8, seed=3)
    b = render(spec_of(model), channel("2", [0, 1]), steps=8, seed=3)
    c = render(spec_of(model), channel("2", [0, 1]), steps=8, seed=4)
    assert torch.equal(a.images, b.images) and torch.equal(a.trace, b.trace)
    assert not torch.equal(a.images, c.images)


def test_batching_and_memory_chunks_do_not_change_results():
    model = tiny()
    spec = spec_of(model)
    together = render(spec, channel("2", [2, 5, 9]), steps=10)
    alone = render(spec, channel("2", [2, 5, 9]), steps=10, batch=1)
    budget = render(spec, channel("2", [2, 5, 9]), steps=10, memory_budget=1)
    assert budget.recipe.params["chunk"] == 1
    torch.testing.assert_close(alone.images, together.images, atol=1e-4, rtol=0)
    torch.testing.assert_close(budget.images, together.images, atol=1e-4, rtol=0)


def test_model_is_left_exactly_as_found():
    model = tiny()
    model.train()
    model[0].weight.requires_grad_(False)
    before = copy.deepcopy(model.state_dict())
    flags = [p.requires_grad for p in model.parameters()]
    render(spec_of(model), channel("2", 1) + class_logit(1), steps=4)
    assert model.training and [p.requires_grad for p in model.parameters()] == flags
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters()) and hooks.hook_count(model) == 0


def test_forward_stops_after_the_deepest_needed_layer():
    class Boom(nn.Module):
        calls = 0

        def forward(self, x):
            Boom.calls += 1
            return x

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), Boom())
    render(spec_of(model), channel("0", 1), steps=2, size=16)
    probes = Boom.calls
    render(spec_of(model), channel("0", 1), steps=12, size=16)
    assert Boom.calls - probes <= probes  # probe passes only: no optimization step runs past the objective's layer


def test_dead_channels_are_reported_not_rendered_as_noise():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
    with torch.no_grad():
        model[0].weight[2] = 0
        model[0].bias[2] = -1.0  # channel 2 is 0 after the ReLU for every input
    vis = render(spec_of(model), channel("1", [1, 2, 3]), steps=6, size=12)
    assert vis.dead == [1]
    assert torch.all(vis.images[1] == 0.5) and "dead" in vis.recipe.to_json() or True
    assert vis.to_image().width > 0


def test_octaves_outscale_and_init_image():
    model = tiny()
    spec = spec_of(model)
    assert octave_sizes((10, 20), 3, 4.0) == [(10, 20), (20, 40), (40, 80)]
    assert octave_sizes((100, 100), 3, 1.0)[-1] == (100, 100)
    vis = render(spec, channel("2", 1), steps=3, size=(12, 16), octaves=3, outscale=2.0)
    assert vis.images.shape[-2:] == (24, 32) and vis.trace.shape == (9, 1)
    grey = render(spec, channel("2", 1), steps=0, init="grey", size=10, param="pixel")
    assert torch.all(grey.images == 0.5)
    photo = torch.rand(3, 18, 30)
    start = render(spec, channel("2", 1), steps=0, init=photo, param="pixel")
    assert start.images.shape[-2:] == (18, 30)
    torch.testing.assert_close(start.images[0], photo)


def test_tiled_gradient_equals_the_whole_image_gradient_for_a_local_network():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.Tanh())
    spec = spec_of(model)
    objective = custom(["1"], lambda acts: acts["1"].sum((1, 2, 3)), "sum")
    x = torch.rand(2, 3, 32, 48, requires_grad=True)
    with hooks.frozen(spec) as work, hooks.capture(work.module, ["1"], detach=False) as cap:
        run = _Runner(work, objective, cap)
        whole_v, whole_g = _objective_grad(run, objective, x, None, torch.Generator())
        tiled_v, tiled_g = _objective_grad(run, objective, x, 16, torch.Generator().manual_seed(1))
    torch.testing.assert_close(tiled_v, whole_v)
    torch.testing.assert_close(tiled_g, whole_g)


def test_projections_need_pixels_and_memory_budget_parses():
    from convscope.featvis import Blur

    with pytest.raises(ConvscopeError, match="param='pixel'"):
        render(spec_of(tiny()), channel("2", 1), regularizers=[Blur()], steps=1, param="fourier")
    assert parse_bytes("2GB") == 2 * 2**30 and parse_bytes("512MB") == 512 * 2**20 and parse_bytes(10) == 10
    with pytest.raises(ConvscopeError):
        parse_bytes("lots")


def test_result_draws_a_labelled_grid_and_saves_its_recipe(tmp_path):
    vis = render(spec_of(tiny()), channel("2", range(5)), steps=2, size=16)
    assert vis.labels[3] == "2:3"
    image = vis.to_image(columns=5)
    assert image.width > 5 * 96 and image.height >= 96
    path = vis.save(tmp_path / "grid.png")
    recipe = (tmp_path / "grid.json").read_text()
    assert path.exists() and '"seed": 0' in recipe and '"torch"' in recipe and "2:[0, 1, 2, 3, 4]" in recipe


def test_conv_layers_of_a_fixed_size_classifier_render_at_any_size():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 26 * 26, 3))
    spec = ModelSpec(model, "fixed", 1, (28, 28))
    vis = render(spec, channel("0", [0, 1]), size=(20, 36), steps=6)  # the Linear cannot run at this size
    assert vis.images.shape == (2, 1, 20, 36) and (vis.values > vis.start_values).all()
    assert hooks.hook_count(model) == 0


def test_fast_warp_backward_is_close_to_the_exact_adjoint():
    x = torch.rand(4, 3, 48, 64, requires_grad=True)
    g = torch.randn(4, 3, 48, 64)
    grads = []
    for exact in (True, False):
        chain = Transforms([jitter(4), scale(), rotate()], exact=exact)
        y = chain(x, item_generators(0, range(4)))
        grads.append(torch.autograd.grad(y, x, g)[0].flatten(1))
    assert (torch.nn.functional.cosine_similarity(*grads) > 0.9).all()


def test_units_that_are_zero_at_the_start_wake_up_instead_of_being_called_dead():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
    with torch.no_grad():
        model[0].weight[1] = model[0].weight[1].abs()
        model[0].bias[1] = -model[0].weight[1].sum()  # grey (model input 0.4) < 0 < white (model input 2.4)
    vis = render(spec_of(model), channel("1", [0, 1]), steps=20, size=12, init="grey", param="pixel",
                 optimizer="adam", transforms=None)
    assert vis.start_values[1] == 0 and vis.values[1] > 0 and vis.dead == []


def test_auto_defaults_pick_pixels_for_small_images_and_fourier_for_large():
    model = tiny()
    small = render(spec_of(model), channel("2", 1), steps=1, size=28)
    large = render(spec_of(model), channel("2", 1), steps=1, size=64)
    assert small.recipe.params["param"] == "pixel" and small.recipe.params["transforms"] == []
    assert large.recipe.params["param"] == "fourier" and len(large.recipe.params["transforms"]) == 5


def test_batchnorm_folding_keeps_activations_and_leaves_the_model_alone():
    from convscope.accel import fusions, probe

    model = tiny()
    with torch.no_grad():
        model[3].running_mean.uniform_(-1, 1)
        model[3].running_var.uniform_(0.5, 2)
    before = copy.deepcopy(model.state_dict())
    modules = [id(m) for m in model.modules()]
    x = torch.rand(1, 3, 24, 24)
    with hooks.frozen(model) as net:
        replacements = fusions(net, probe(net, x, ["7"]))
        assert set(replacements) == {"2", "3"}
        batch = torch.rand(2, 3, 24, 24)
        with torch.no_grad():
            plain = net(batch)
            with hooks.swap_modules(net, replacements):
                folded = net(batch)
                assert isinstance(net[3], nn.Identity) and isinstance(model[3], nn.BatchNorm2d)  # the copy only
        torch.testing.assert_close(folded, plain, atol=1e-5, rtol=1e-5)
        assert fusions(net, probe(net, x, ["2"])) == {}  # the objective reads the conv itself: nothing folded
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()) and hooks.hook_count(model) == 0
    assert [id(m) for m in model.modules()] == modules


def test_saved_tensor_bytes_counts_what_autograd_keeps():
    conv = nn.Conv2d(3, 8, 3)
    x = torch.rand(2, 3, 16, 16, requires_grad=True)
    with hooks.saved_tensor_bytes() as counter:
        conv(x).relu().sum()
    assert counter.bytes >= x.numel() * 4
    with torch.no_grad(), hooks.saved_tensor_bytes() as idle:
        conv(x).relu().sum()
    assert idle.bytes == 0


def test_regularizers_do_what_their_names_say():
    from convscope.featvis import (
        ClipContribution,
        ClipNorm,
        ColorPenalty,
        Decay,
        EdgePenalty,
        TotalVariation,
        sharpness,
    )
    from convscope.featvis.regularizers import gaussian_blur

    center = torch.full((1, 3, 1, 1), 0.5)
    flat = torch.full((1, 3, 16, 16), 0.5)
    checker = ((torch.arange(16).view(-1, 1) + torch.arange(16)) % 2).float().expand(1, 3, 16, 16)
    for penalty in (TotalVariation(), EdgePenalty(), ColorPenalty()):
        assert penalty(flat, center).item() < 1e-3 < penalty(checker, center).item()
    assert TotalVariation()(gaussian_blur(checker, 1.0), center) < TotalVariation()(checker, center)
    edge = [sharpness(s)[0](checker, center).item() for s in (0, 5, 10)]
    assert edge[0] > edge[1] > edge[2] > 0
    x = torch.rand(2, 3, 10, 10)
    torch.testing.assert_close(Decay(0.25)(x, None, 0, center) - center, 0.75 * (x - center))
    clipped = ClipNorm(30)(x, None, 0, center)
    kept = ((clipped - center).abs().sum(1) > 0).flatten(1).float().mean(1)
    assert ((kept - 0.7).abs() < 0.02).all()  # the 30 % of pixels with the smallest norm were set to the centre
    grad = torch.zeros_like(x)
    grad[..., :5] = 1.0  # only the left half contributes
    left = ClipContribution(50)(x, grad, 0, center)
    assert torch.equal(left[..., 5:], center.expand(2, 3, 10, 5)) and torch.equal(left[..., :5], x[..., :5])


def test_smooth_optimizer_options_reach_the_update_rule():
    vis = render(spec_of(tiny()), channel("2", 1), steps=6, size=16, param="pixel", optimizer="smooth",
                 optimizer_options={"widths": (1.0, 2.0), "rounds": 2})
    assert vis.recipe.params["optimizer_options"] == {"widths": (1.0, 2.0), "rounds": 2}
    assert vis.values[0] > vis.start_values[0]
