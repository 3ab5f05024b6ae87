"""Model strings: every kind loads, with preprocessing from metadata; bad ones raise clear errors."""

from __future__ import annotations

import textwrap

import pytest
import torch
from torch import nn

from convscope.errors import ModelLoadError, WeightMismatchError
from convscope.models import CNN4, ModelSpec, SmallCNN, load, save_safetensors
from convscope.models.registry import Entry, register_model


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_builtin_architectures_are_seeded_and_leave_global_rng_alone():
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a, b, c = load("convscope:small-cnn", seed=3), load("convscope:small-cnn", seed=3), load("convscope:small-cnn")
    assert torch.equal(torch.get_rng_state(), before)
    assert _same_weights(a.module, b.module) and not _same_weights(a.module, c.module)
    assert a.channels == 1 and a.input_size == (28, 28) and a.mean == (0.5,) and not a.module.training
    names = [n for n, _ in a.module.named_children()]
    assert names[:6] == ["conv1", "relu1", "pool1", "conv2", "relu2", "pool2"] and names[-3:] == ["relu3", "dropout",
                                                                                                   "fc2"]
    assert a.module(a.example_input(2)).shape == (2, 10)


def test_builtin_options_and_variants():
    spec = load("convscope:cnn4,channels=1,num_classes=5,size=20x24")
    assert spec.channels == 1 and spec.input_size == (20, 24) and spec.mean == (0.5,)
    assert spec.module(spec.example_input(3)).shape == (3, 5)
    assert [m.stride for m in load("convscope:small-cnn-s2").module if isinstance(m, nn.Conv2d)] == [(2, 2), (2, 2)]
    with pytest.raises(ModelLoadError, match="no option 'widht'"):
        load("convscope:cnn4,widht=3")
    with pytest.raises(ModelLoadError, match="small-cnn"):
        load("convscope:smallcnn")


def test_registry_refuses_duplicates():
    with pytest.raises(ValueError, match="already registered"):
        register_model(Entry("small-cnn", "again", SmallCNN))


def test_torchvision_random_init_is_seeded_with_default_preprocessing():
    a = load("torchvision:resnet18", seed=1)
    b = load("torchvision:resnet18", seed=1)
    assert _same_weights(a.module, b.module)
    assert a.mean == pytest.approx((0.485, 0.456, 0.406)) and a.input_size == (224, 224) and a.resize == 256
    assert a.class_names is None and a.source["weights"] is None
    small = load("torchvision:resnet18,num_classes=4")
    assert small.module.fc.out_features == 4


def test_torchvision_pretrained_has_metadata():
    spec = load("torchvision:mobilenet_v2@IMAGENET1K_V1")
    assert len(spec.class_names) == 1000 and spec.class_names[281] == "tabby cat" or "tabby" in spec.class_names[281]
    assert spec.resize == 256 and spec.input_size == (224, 224) and spec.source["weights"] == "IMAGENET1K_V1"
    assert not spec.module.training


@pytest.mark.parametrize("text, message", [
    ("torchvision:resnet181", "Did you mean 'resnet18'"),
    ("torchvision:mobilenet_v2@IMAGENET1K_V9", "valid: IMAGENET1K_V1, IMAGENET1K_V2"),
    ("torchvision:fasterrcnn_resnet50_fpn", "not a classification model"),
    ("resnet18", "torchvision:resnet18"),
    ("tourchvision:resnet18", "Did you mean 'torchvision'"),
    ("convscope:cnn4,channels", "KEY=VALUE"),
    ("missing/model.safetensors", "does not exist"),
])
def test_bad_model_strings(text, message):
    with pytest.raises(ModelLoadError, match=message):
        load(text)


def test_timm_without_timm_is_a_clear_error(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "timm", None)  # as if not installed: `import timm` raises ImportError
    with pytest.raises(ModelLoadError, match="needs timm"):
        load("timm:resnet18")


def test_torchscript_file(tmp_path):
    module = CNN4(channels=2, num_classes=3, input_size=16).eval()
    path = tmp_path / "m.pt"
    torch.jit.script(module).save(str(path))
    spec = load(path)
    x = torch.randn(2, 2, 16, 16)
    assert spec.channels == 2 and torch.allclose(spec.module(x), module(x))
    with_meta = tmp_path / "meta.pt"
    torch.jit.save(torch.jit.script(module), str(with_meta),
                   _extra_files={"convscope.json": '{"channels": 2, "input_size": [16, 16], "mean": [0.1, 0.2], '
                                                   '"std": [1, 2], "class_names": ["a", "b", "c"]}'})
    spec = load(str(with_meta))
    assert spec.input_size == (16, 16) and spec.mean == (0.1, 0.2) and spec.class_names == ["a", "b", "c"]


def test_safetensors_with_arch_and_with_metadata(tmp_path):
    trained = load("convscope:small-cnn", seed=5).module
    bare = save_safetensors(trained, tmp_path / "bare.safetensors", {})
    with pytest.raises(ModelLoadError, match="--arch"):
        load(bare)
    spec = load(bare, arch="convscope:small-cnn")
    assert _same_weights(spec.module, trained) and spec.channels == 1 and spec.source["arch"] == "convscope:small-cnn"
    described = save_safetensors(trained, tmp_path / "described.safetensors", {
        "arch": "convscope:small-cnn", "channels": 1, "input_size": [28, 28], "mean": [0.2], "std": [0.3],
        "class_names": [f"c{i}" for i in range(10)], "seed": 5})
    spec = load(described)
    assert _same_weights(spec.module, trained) and spec.mean == (0.2,) and spec.class_names[3] == "c3"
    half = load(save_safetensors(trained, tmp_path / "half.safetensors", {"arch": "convscope:small-cnn"},
                                 dtype=torch.float16))
    assert half.dtype == torch.float32
    assert torch.allclose(half.module.fc1.weight, trained.fc1.weight, atol=1e-3)


def test_pth_state_dict_loads_with_weights_only(tmp_path):
    model = load("torchvision:resnet18,num_classes=3", seed=2).module
    plain, wrapped = tmp_path / "plain.pth", tmp_path / "wrapped.pth"
    torch.save(model.state_dict(), plain)
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, wrapped)
    for path in (plain, wrapped):
        spec = load(path, arch="torchvision:resnet18,num_classes=3")
        assert _same_weights(spec.module, model) and spec.mean == pytest.approx((0.485, 0.456, 0.406))


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_pickles_with_objects_are_refused(tmp_path, capsys):
    path = tmp_path / "evil.pth"
    with path.open("wb") as handle:
        torch.save({"weight": torch.zeros(1), "x": _Evil()}, handle)
    with pytest.raises(ModelLoadError, match="weights_only"):
        load(path, arch="convscope:small-cnn")
    assert "pwned" not in capsys.readouterr().out
    whole = tmp_path / "whole.pth"
    torch.save(SmallCNN(), whole)  # a pickled module, not a state dict
    with pytest.raises(ModelLoadError, match="never runs arbitrary pickles"):
        load(whole, arch="convscope:small-cnn")


def test_mismatched_weights_list_keys_and_shapes(tmp_path):
    state = SmallCNN(num_classes=7).state_dict()
    state["extra.weight"] = torch.zeros(2)
    del state["conv1.bias"]
    path = save_safetensors(state, tmp_path / "w.safetensors", {})
    with pytest.raises(WeightMismatchError) as info:
        load(path, arch="convscope:small-cnn")
    message = str(info.value)
    assert "missing keys: conv1.bias" in message and "unexpected keys: extra.weight" in message
    assert "fc2.weight: file (7, 128) vs model (10, 128)" in message and "fc2.bias" in message


@pytest.mark.parametrize("kind", ["truncated", "garbage", "empty"])
def test_corrupt_weight_files(tmp_path, kind):
    good = save_safetensors(SmallCNN(), tmp_path / "good.safetensors", {"arch": "convscope:small-cnn"})
    pth = tmp_path / "good.pth"
    torch.save(SmallCNN().state_dict(), pth)
    for source in (good, pth):
        bad = tmp_path / f"bad{source.suffix}"
        raw = source.read_bytes()
        bad.write_bytes({"truncated": raw[: len(raw) // 2], "garbage": b"\x13\x37" * 500, "empty": b""}[kind])
        with pytest.raises(ModelLoadError, match="corrupt|truncated|empty|not a readable") as info:
            load(bad, arch="convscope:small-cnn")
        assert str(bad) in str(info.value)


def test_python_factory(tmp_path):
    file = tmp_path / "zoo.py"
    file.write_text(textwrap.dedent("""
        import torch
        from torch import nn
        from convscope.models import ModelSpec

        def plain(width=4):
            return nn.Sequential(nn.Conv2d(3, width, 3), nn.ReLU())

        def described():
            net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.LazyLinear(2))
            return ModelSpec(net, "x", channels=1, input_size=(8, 8), class_names=["no", "yes"])

        def broken():
            return 42
    """))
    a, b = load(f"{file}:plain,width=6", seed=4), load(f"{file}:plain,width=6", seed=4)
    assert a.module[0].out_channels == 6 and _same_weights(a.module, b.module) and not a.module.training
    described = load(f"{file}:described")
    assert described.class_names == ["no", "yes"] and described.input_size == (8, 8)
    with pytest.raises(ModelLoadError, match="returned a int"):
        load(f"{file}:broken")
    with pytest.raises(ModelLoadError, match="Did you mean 'plain'"):
        load(f"{file}:plan")
    with pytest.raises(ModelLoadError, match="does not exist"):
        load(f"{tmp_path}/nope.py:plain")


def test_modules_and_specs_pass_through_untouched():
    module = SmallCNN().train()
    spec = load(module)
    assert spec.module is module and module.training and spec.channels == 1
    assert load(spec) is spec
    with pytest.raises(ModelLoadError):
        load(42)  # type: ignore[arg-type]


def test_arch_only_for_weight_files():
    with pytest.raises(ModelLoadError, match="weight files only"):
        load("convscope:small-cnn", arch="convscope:cnn4")
