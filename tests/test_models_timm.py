"""Real timm models (random init, nothing downloaded), end to end: load by name with timm's own preprocessing,
list layers, attribute (saliency, Grad-CAM), render."""

from __future__ import annotations

import pytest
import torch

import convscope as cs
from convscope import attribution as A
from convscope import featvis
from convscope.hooks import hook_count
from convscope.layers import list_layers

timm = pytest.importorskip("timm")
from timm.data import create_transform, resolve_data_config  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
NAME = "mobilenetv3_small_050"  # 1.6M parameters: conv stem, inverted residuals with squeeze-excitation, hard-swish
SMALL = 64  # inputs for the tests below: the network runs at any size


@pytest.fixture(scope="module")
def spec():
    return cs.load(f"timm:{NAME}", seed=0)


def test_preprocessing_is_timms_own_eval_transform(spec):
    config = resolve_data_config(model=spec.module)
    steps = {type(step).__name__: step for step in create_transform(**config).transforms}
    resize, crop = steps["Resize"], steps["CenterCrop"]
    assert spec.resize == resize.size and spec.input_size == tuple(crop.size) == tuple(config["input_size"][1:])
    assert spec.interpolation == resize.interpolation.value == config["interpolation"]
    assert spec.mean == tuple(config["mean"]) and spec.std == tuple(config["std"]) and spec.channels == 3
    assert spec.class_names is None and spec.source["weights"] is None  # random init: no weights, no names
    for other in ("resnet10t", "test_efficientnet"):  # crop_pct 0.875 and 0.95 at other input sizes
        model = timm.create_model(other, pretrained=False)
        loaded, reference = cs.load(f"timm:{other}"), create_transform(**resolve_data_config(model=model))
        assert loaded.resize == reference.transforms[0].size


def test_the_same_seed_builds_the_same_weights_and_leaves_the_global_generator_alone():
    before = torch.get_rng_state()
    a, b = cs.load(f"timm:{NAME}", seed=3), cs.load(f"timm:{NAME}", seed=3)
    assert torch.equal(before, torch.get_rng_state())
    assert all(torch.equal(p, q) for p, q in zip(a.module.parameters(), b.module.parameters()))


def test_layers_list_every_module_with_its_output_shape(spec):
    rows = {row.name: row for row in list_layers(spec, input_size=(SMALL, SMALL), receptive=None)}
    assert rows["conv_stem"].shape == (spec.module.conv_stem.out_channels, SMALL // 2, SMALL // 2)  # stride 2
    assert rows["classifier"].shape == (1000,)
    assert {"blocks.0.0", "blocks.5.0", "global_pool"} <= set(rows)
    assert hook_count(spec.module) == 0


def test_saliency_is_the_input_gradient_of_the_logit_and_gradcam_a_nonnegative_map(spec):
    x = torch.randn(2, 3, SMALL, SMALL)
    result = A.saliency(spec, x, target=[7, 11])
    leaf = x.clone().requires_grad_(True)
    spec.module.eval()
    spec.module(leaf)[[0, 1], [7, 11]].sum().backward()
    assert torch.allclose(result.attributions, leaf.grad, rtol=1e-4, atol=1e-7)
    cam = A.gradcam(spec, x, target=[7, 11], layer="blocks.3")
    assert cam.map.shape == (2, SMALL, SMALL) and bool((cam.map >= 0).all()) and torch.isfinite(cam.map).all()
    assert hook_count(spec.module) == 0


def test_render_raises_a_channel_of_a_timm_block(spec):
    vis = featvis.render(spec, featvis.channel("blocks.1", 3), size=SMALL, steps=6, seed=0)
    assert vis.images.shape == (1, 3, SMALL, SMALL) and float(vis.values[0]) > float(vis.start_values[0])


def test_a_weight_file_with_a_timm_tag_takes_the_tags_metadata_without_downloading(tmp_path, monkeypatch):
    import huggingface_hub

    def refuse(*args, **kwargs):
        raise AssertionError("tried to download")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", refuse)
    path = tmp_path / "mine.pth"
    torch.save(timm.create_model(NAME, pretrained=False).state_dict(), path)
    tagged = cs.load(path, arch=f"timm:{NAME}@lamb_in1k")
    assert tagged.class_names is not None and len(tagged.class_names) == 1000 and "assumed" not in tagged.source
    assert tagged.class_name(tagged.class_index("goldfish")).lower().startswith("goldfish")
    plain = cs.load(path, arch=f"timm:{NAME}")
    assert plain.class_names is None and "lamb_in1k" in plain.source["assumed"]
    assert plain.resize == tagged.resize == 256
