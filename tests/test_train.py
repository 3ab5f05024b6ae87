"""Training: seeded reproducibility, resume == uninterrupted, cnn4 learns shapes, saved files load without --arch."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from convscope.cli import main
from convscope.errors import ConvscopeError
from convscope.models import load, train
from convscope.models.files import read_safetensors

pytestmark = pytest.mark.usefixtures("one_thread")


def _tiny_arrays(n: int = 64, size: int = 12, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two classes of noisy gray images: class 1 has a bright top half."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    images = rng.integers(0, 120, (n, size, size)).astype(np.uint8)
    images[labels == 1, : size // 2] += 120
    return images, labels


def _weights(spec) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in spec.module.state_dict().items()}


def test_same_seed_same_weights_and_global_rng_untouched():
    data = _tiny_arrays()
    torch.manual_seed(99)
    before = torch.get_rng_state()
    a = train("small-cnn", data, epochs=1, batch_size=16, seed=3, heldout_fraction=0)
    b = train("small-cnn", data, epochs=1, batch_size=16, seed=3, heldout_fraction=0)
    c = train("small-cnn", data, epochs=1, batch_size=16, seed=4, heldout_fraction=0)
    assert torch.equal(torch.get_rng_state(), before)
    wa, wb, wc = _weights(a.spec), _weights(b.spec), _weights(c.spec)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)
    untrained = _weights(load("convscope:small-cnn,channels=1,num_classes=2,size=12x12", seed=3))
    assert not torch.equal(wa["conv1.weight"], untrained["conv1.weight"])  # training changed the weights
    assert a.spec.input_size == (12, 12) and a.spec.class_names == ["0", "1"] and not a.spec.module.training


def test_resume_gives_the_uninterrupted_result(tmp_path):
    data = _tiny_arrays(48)
    straight = train("small-cnn", data, epochs=3, batch_size=16, seed=1, out=tmp_path / "a" / "m.safetensors",
                     checkpoint_every=1)
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [
        "m.epoch1.optim.safetensors", "m.epoch1.safetensors", "m.epoch2.optim.safetensors", "m.epoch2.safetensors",
        "m.safetensors"]
    out = tmp_path / "b" / "m.safetensors"
    train("small-cnn", data, epochs=3, batch_size=16, seed=1, out=out, checkpoint_every=1)
    out.unlink()  # as if killed during the last epoch
    (tmp_path / "b" / "m.epoch2.safetensors").unlink()
    lines: list[str] = []
    resumed = train("small-cnn", data, epochs=3, batch_size=16, seed=1, out=out, checkpoint_every=1, resume=True,
                    log=lines.append)
    assert lines[0].startswith("resuming after epoch 1")
    ws, wr = _weights(straight.spec), _weights(resumed.spec)
    assert all(torch.equal(ws[k], wr[k]) for k in ws)
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]
    with pytest.raises(ConvscopeError, match="cannot resume"):
        train("small-cnn", data, epochs=3, batch_size=16, seed=2, out=out, checkpoint_every=1, resume=True)


def _shapes_folder(root, per_class: int = 40, size: int = 32, seed: int = 0) -> None:
    """Three classes: squares, discs, horizontal bars, at random places, sizes and (overlapping) colours."""
    rng = np.random.default_rng(seed)
    for name in ("bar", "disc", "square"):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            image = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(0, 80, 3)))
            draw = ImageDraw.Draw(image)
            colour = tuple(int(v) for v in rng.integers(120, 256, 3))
            r = int(rng.integers(6, 11))
            x, y = (int(v) for v in rng.integers(r, size - r, 2))
            if name == "square":
                draw.rectangle([x - r, y - r, x + r, y + r], fill=colour)
            elif name == "disc":
                draw.ellipse([x - r, y - r, x + r, y + r], fill=colour)
            else:
                draw.rectangle([2, y - 2, size - 3, y + 2], fill=colour)
            image.save(root / name / f"{i}.png")


def test_cnn4_learns_coloured_shapes_and_saves_a_self_describing_file(tmp_path):
    _shapes_folder(tmp_path / "shapes")
    (tmp_path / "shapes" / "disc" / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "cnn4.safetensors"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = train("cnn4", tmp_path / "shapes", epochs=6, batch_size=16, seed=0, out=out, heldout_fraction=0.25,
                       command="test")
    losses = [h["loss"] for h in result.history]
    assert losses[-1] < 0.6 * losses[0]
    assert result.accuracy is not None and result.accuracy >= 0.6  # chance is 1/3
    tensors, metadata = read_safetensors(out)
    assert metadata["arch"] == "convscope:cnn4,channels=3,num_classes=3,size=32x32"
    assert metadata["class_names"] == ["bar", "disc", "square"] and metadata["epochs"] == 6
    assert metadata["accuracy"] == pytest.approx(result.accuracy) and metadata["command"] == "test"
    assert metadata["mean"] == [0.5, 0.5, 0.5] and metadata["seed"] == 0
    spec = load(out)  # no arch needed
    assert spec.class_names == ["bar", "disc", "square"] and spec.channels == 3 and spec.input_size == (32, 32)
    assert all(torch.equal(spec.module.state_dict()[k], result.spec.module.state_dict()[k]) for k in tensors)


def test_cli_train_then_predict_without_arch(tmp_path, capsys):
    images, labels = _tiny_arrays(40, size=16)
    np.savez(tmp_path / "tiny.npz", images=images, labels=labels, classes=np.array(["dark", "bright"]))
    out = tmp_path / "m.safetensors"
    code = main(["train", "small-cnn-s2", "--data", str(tmp_path / "tiny.npz"), "--epochs", "2", "--batch-size", "8",
                 "--size", "28", "28", "--checkpoint-every", "1", "-o", str(out)])
    assert code == 0
    printed = capsys.readouterr()
    assert "held-out accuracy" in printed.out and "epoch 2/2" in printed.err
    assert (tmp_path / "m.epoch1.safetensors").is_file()
    _, metadata = read_safetensors(out)
    assert metadata["command"].startswith("convscope train small-cnn-s2 --data ")
    assert "--epochs 2" in metadata["command"] and "--size 28 28" in metadata["command"]
    assert metadata["arch"].startswith("convscope:small-cnn-s2,")
    Image.fromarray(images[0]).save(tmp_path / "img.png")
    assert main(["predict", str(out), str(tmp_path / "img.png"), "--json", "--top", "2"]) == 0
    rows = json.loads(capsys.readouterr().out)["predictions"]
    assert {item["name"] for item in rows[0]["top"]} == {"dark", "bright"}
    assert sum(item["prob"] for item in rows[0]["top"]) == pytest.approx(1.0, abs=1e-5)
    assert main(["train", "nonsense", "--data", str(tmp_path / "tiny.npz"), "-o", str(out)]) == 2
    assert "unknown convscope model 'nonsense'" in capsys.readouterr().err
