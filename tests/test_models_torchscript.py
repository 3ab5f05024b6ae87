"""TorchScript files, scripted and traced: what needs only the input gradient or the output runs and equals the
Python model; what needs the model's layers (hooks, submodules) is one `TorchScriptError` listing what works."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import convscope as cs
from convscope import analysis, featvis
from convscope import attribution as A
from convscope.cli import main
from convscope.errors import TargetError, TorchScriptError
from convscope.hooks import capture, hook_count
from convscope.layers import list_layers
from convscope.models import predict

pytestmark = pytest.mark.usefixtures("one_thread")


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 6, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 8, 3), nn.ReLU(),
                         nn.Flatten(), nn.Linear(8 * 11 * 11, 5)).eval()


@pytest.fixture(scope="module", params=["scripted", "traced"])
def files(request, tmp_path_factory):
    """(the Python model, its TorchScript file without any convscope metadata)."""
    model = _net()
    path = tmp_path_factory.mktemp("ts") / f"{request.param}.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated in favour of torch.export
        example = torch.zeros(1, 1, 28, 28)
        made = torch.jit.script(model) if request.param == "scripted" else torch.jit.trace(model, example)
        made.save(str(path))
    return model, path


def _load(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return cs.load(path)


def test_a_torchscript_file_takes_its_input_from_the_model_and_predicts_as_the_python_model(files):
    model, path = files
    spec = _load(path)
    assert spec.channels == 1 and spec.input_size == (28, 28) and spec.mean is None
    assert "no convscope.json" in spec.source["assumed"]
    x = torch.rand(3, 1, 28, 28)
    assert torch.allclose(predict(spec, x).probs, predict(cs.load(model), x).probs, atol=1e-6)


def test_gradient_and_output_methods_equal_the_python_models(files):
    model, path = files
    spec, python = _load(path), cs.load(model)
    x = torch.rand(2, 1, 28, 28)
    for method, options in (("saliency", {}), ("smoothgrad", {"samples": 3}), ("ig", {"steps": 4}),
                            ("occlusion", {"window": 7, "stride": 7})):
        ours, reference = (A.METHODS[method](m, x, target=[1, 3], **options) for m in (spec, python))
        assert torch.allclose(ours.attributions, reference.attributions, atol=1e-5), method
    assert hook_count(spec.module) == 0


def test_class_model_and_adversarial_run_on_torchscript(files):
    _, path = files
    spec = _load(path)
    vis = featvis.class_model(spec, 2, steps=8, seed=0)
    assert vis.images.shape == (1, 1, 28, 28) and float(vis.values[0]) > float(vis.start_values[0])
    attack = featvis.adversarial(spec, torch.rand(1, 28, 28), target=4, eps=0.1, steps=3)
    assert attack.adversarial.shape == (1, 1, 28, 28)


def test_layer_tools_say_in_one_line_what_works_on_torchscript(files, capsys):
    _, path = files
    spec = _load(path)
    x = torch.rand(1, 1, 28, 28)
    refused = [lambda: list_layers(spec), lambda: analysis.activations(spec, x, "1"),
               lambda: analysis.filters(spec, "0"), lambda: A.gradcam(spec, x, layer="3"), lambda: A.gradcam(spec, x),
               lambda: featvis.render(spec, featvis.channel("3", 1), steps=2), lambda: capture(spec.module, "3").__enter__()]
    for run in refused:
        with pytest.raises(TorchScriptError) as info:
            run()
        message = str(info.value)
        assert "TorchScript" in message and "saliency" in message and "class-model" in message and "\n" not in message
    with pytest.raises(TargetError, match="TorchScript"):  # the rule would find no ReLU to change: said, not faked
        A.guided_backprop(spec, x)
    assert hook_count(spec.module) == 0
    assert main(["layers", str(path)]) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()  # the note on the assumed preprocessing, then the error
    assert lines[-1].startswith("convscope: error:") and "TorchScript" in lines[-1] and "Traceback" not in err
    assert [line.split(":")[0] for line in lines] == ["note", "convscope"]

