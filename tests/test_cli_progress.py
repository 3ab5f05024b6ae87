"""Long commands show where they are: the bars, drawn on a terminal, reach their end and say what they count."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
from PIL import Image
from rich.console import Console

from convscope.cli import _common, main

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def terminal(monkeypatch) -> io.StringIO:
    """Every progress bar draws on a fake terminal; returns what it shows."""
    screen = io.StringIO()
    monkeypatch.setattr(_common, "_console",
                        lambda: Console(file=screen, force_terminal=True, width=200, color_system=None))
    return screen


def _finished(screen: io.StringIO) -> list[tuple[int, int]]:
    """(done, total) of every bar's last drawing."""
    return [(int(a), int(b)) for a, b in re.findall(r"(\d+)/(\d+)", screen.getvalue())]


def test_train_bar_shows_epoch_loss_and_accuracy(tmp_path, terminal):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", images=rng.integers(0, 256, (24, 28, 28), dtype=np.uint8), labels=np.arange(24) % 2)
    assert main(["train", "small-cnn", "--data", str(tmp_path / "d.npz"), "--epochs", "2", "--batch-size", "8",
                 "-o", str(tmp_path / "m.safetensors")]) == 0
    shown = terminal.getvalue()
    assert "epoch 2/2" in shown and "loss" in shown and "accuracy" in shown and "held-out" in shown
    loss = [float(v) for v in re.findall(r"loss (\d+\.\d+), accuracy", shown)]
    assert loss and all(np.isfinite(loss))


def test_adversarial_and_invariances_have_progress_bars(tmp_path, terminal):
    image = tmp_path / "x.png"
    Image.fromarray((np.random.default_rng(1).random((28, 28)) * 255).astype(np.uint8)).save(image)
    assert main(["adversarial", "convscope:small-cnn", str(image), "--steps", "3", "-o", str(tmp_path / "a.png")]) == 0
    assert "pgd" in terminal.getvalue() and (3, 3) in _finished(terminal)
    terminal.truncate(0)
    terminal.seek(0)
    assert main(["invariances", "convscope:small-cnn", "--layer", "conv2", "--unit", "3", "--k", "1", "--steps",
                 "4", "--iterations", "6", "-o", str(tmp_path / "i.png")]) == 0
    assert "Hessian" in terminal.getvalue() and (10, 10) in _finished(terminal)  # 4 render steps + 6 products


def test_visualize_captions_one_unit_as_the_api_save_does(tmp_path, capsys):
    from convscope import load
    from convscope.featvis import channel, render

    out = tmp_path / "cli.png"
    assert main(["visualize", "convscope:small-cnn", "--layer", "conv1", "--unit", "3", "--steps", "3", "-o",
                 str(out)]) == 0
    api = render(load("convscope:small-cnn"), channel("conv1", 3), steps=3, seed=0).save(tmp_path / "api.png")
    cli_pixels, api_pixels = np.asarray(Image.open(out)), np.asarray(Image.open(api))
    assert cli_pixels.shape == api_pixels.shape and np.array_equal(cli_pixels, api_pixels)
    assert cli_pixels.shape[0] > cli_pixels.shape[1]  # the caption below the square picture
