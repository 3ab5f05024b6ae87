"""Layer addressing and the layer listing: names are named_modules() paths, errors say what would work, every call
of a reused module is its own row with its own shape and receptive field."""

from __future__ import annotations

import json

import pytest
import torch
import torchvision
from torch import nn

from convscope.errors import LayerNotFoundError, UnitOutOfRangeError, UnitSyntaxError
from convscope.hooks import capture, hook_count
from convscope.layers import Unit, check_unit, list_layers, parse_unit, resolve_layer


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(6, 8, (3, 5), padding=(1, 2)))
        self.act = nn.ReLU()
        self.unused = nn.Conv2d(8, 8, 1)
        self.head = nn.Linear(8 * 4 * 6, 5)

    def forward(self, x):
        x = self.act(self.features(x))
        x = self.act(x * 2)
        return self.head(x.flatten(1))


@pytest.mark.parametrize("text, unit", [
    ("features.3", Unit("features.3")),
    ("features.3:7", Unit("features.3", 7)),
    ("layer4.1.conv2:17@3,5", Unit("layer4.1.conv2", 17, 3, 5)),
    ("layer1.0.relu#1:2@0,1", Unit("layer1.0.relu#1", 2, 0, 1)),
])
def test_parse_unit_round_trips(text, unit):
    assert parse_unit(text) == unit
    assert str(parse_unit(text)) == text


@pytest.mark.parametrize("text", ["", ":3", "conv1:x", "conv1:3@4", "conv1@1,2"])
def test_parse_unit_rejects(text):
    with pytest.raises(UnitSyntaxError):
        parse_unit(text)


def test_unknown_layer_names_the_closest():
    model = torchvision.models.resnet18()
    with pytest.raises(LayerNotFoundError) as error:
        resolve_layer(model, "layer4.1.conv")
    assert "layer4.1.conv1" in str(error.value) and "layer4.1.conv2" in str(error.value)
    name, module = resolve_layer(model, model.layer2[0].bn1)
    assert name == "layer2.0.bn1" and module is model.layer2[0].bn1


def test_out_of_range_units_say_the_valid_range():
    shape = (1, 8, 4, 6)  # non-square: rows 0..3, cols 0..5
    check_unit(parse_unit("x:7@3,5"), shape)
    with pytest.raises(UnitOutOfRangeError, match=r"channels 0\.\.7"):
        check_unit(parse_unit("x:8"), shape)
    with pytest.raises(UnitOutOfRangeError, match=r"rows 0\.\.3, cols 0\.\.5"):
        check_unit(parse_unit("x:1@5,3"), shape)  # row and col swapped: row 5 does not exist
    with pytest.raises(UnitOutOfRangeError, match="no spatial positions"):
        check_unit(parse_unit("fc:1@0,0"), (1, 10))


def test_listing_rows_shapes_params_and_fields():
    model = Net()
    x = torch.zeros(1, 3, 8, 12)
    rows = list_layers(model, input_size=(8, 12))
    names = [r.name for r in rows]
    expected_order = [n for n, _ in model.named_modules() if n]
    assert [r.path for r in rows if not r.name.endswith("#1")] == expected_order
    assert "act#0" in names and "act#1" in names and "act" not in names
    by_name = {r.name: r for r in rows}
    with torch.no_grad(), capture(model, ["features.3", "act#1", "head"]) as cap:
        model(x)
    assert by_name["features.3"].shape == tuple(cap["features.3"].shape[1:]) == (8, 4, 6)
    assert by_name["head"].shape == (5,)
    assert by_name["unused"].calls == 0 and by_name["unused"].shape is None
    assert by_name["features"].params == sum(p.numel() for p in model.features.parameters())
    assert by_name["features.3"].params == 6 * 8 * 3 * 5 + 8
    rf = by_name["features.3"].receptive_field
    assert rf.size == (3 + 1 + 2 * 2, 3 + 1 + 4 * 2) and rf.stride == (2, 2)  # H and W differ
    assert by_name["act#0"].receptive_field == rf and by_name["act#1"].receptive_field == rf
    assert by_name["head"].receptive_field.uniform and by_name["head"].receptive_field.stride is None
    assert json.loads(json.dumps([r.to_dict() for r in rows]))  # plain data
    assert hook_count(model) == 0


def test_resnet18_reused_relu_rows_differ():
    model = torchvision.models.resnet18()
    model.train()
    rows = {r.name: r for r in list_layers(model, input_size=(32, 32))}
    first, second = rows["layer1.0.relu#0"], rows["layer1.0.relu#1"]
    assert first.calls == second.calls == 2
    assert first.shape == second.shape == (64, 8, 8)
    assert first.receptive_field.size != second.receptive_field.size
    assert rows["relu"].calls == 1 and "relu#0" not in rows  # the stem ReLU runs once: no suffix
    assert all(m.training for m in model.modules()), "the probe pass must restore training mode"
    assert hook_count(model) == 0


def test_mobilenet_v2_listing_is_fully_analytic():
    rows = list_layers(torchvision.models.mobilenet_v2(), input_size=(64, 64))
    fields = [r.receptive_field for r in rows if r.receptive_field is not None]
    assert len(fields) == len(rows) and all(f.method == "analytic" for f in fields)
    last = next(r for r in rows if r.name == "features.18")
    assert last.receptive_field.size == (491, 491) and last.receptive_field.stride == (32, 32)


def test_cli_layers_table_and_json(monkeypatch, capsys):
    import convscope.models as models
    from convscope.cli import main
    from convscope.models.spec import ModelSpec

    def fake_load(name, **_):
        return ModelSpec(Net(), name, channels=3, input_size=(8, 12))

    monkeypatch.setattr(models, "load", fake_load)
    assert main(["layers", "tiny"]) == 0
    out = capsys.readouterr().out
    for text in ("act#0", "act#1", "features.3", "8x4x6", "analytic", "not run", "8x12"):
        assert text in out, text
    assert main(["layers", "tiny", "--json", "--match", "act"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == ["act#0", "act#1"]
    assert rows[0]["receptive_field"]["method"] == "analytic"
