"""The README's `convscope invariances convscope:fashion-cnn --layer conv2 --unit 5` works with its defaults, and its
strips show a change one can see; too few free directions shrink k with a note instead of failing."""

from __future__ import annotations

import json

import pytest
import torch

from convscope import load
from convscope.cli import main
from convscope.featvis.invariances import invariances

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def fashion_unit5():
    torch.manual_seed(0)
    return invariances(load("convscope:fashion-cnn"), "conv2:5", steps=32)


def test_the_readme_command_runs_with_the_default_k(tmp_path, capsys):
    code = main(["invariances", "convscope:fashion-cnn", "--layer", "conv2", "--unit", "5", "--steps", "32", "-o",
                 str(tmp_path / "strip.png"), "--json"])
    assert code == 0, capsys.readouterr().err
    assert json.loads(capsys.readouterr().out)["roles"] == ["steepest"] * 4 + ["flattest"] * 4


def test_default_strips_show_a_visible_change_that_the_steepest_directions_feel_more(fashion_unit5):
    result = fashion_unit5
    moved = (result.strips[:, [0, -1]] - result.optimum.unsqueeze(0)).abs()  # the two end images of each strip
    visible = (moved > 0.1).flatten(2).sum(2)  # pixels moved by more than a tenth of the range
    assert bool((visible >= 10).all()), visible
    change = result.change()
    k = result.roles.count("steepest")
    assert float(change[:k].mean()) > float(change[k:].mean())
    assert float(change[:k].min()) > 0.1 * abs(result.activation)  # the unit clearly drops along every steepest


def test_small_inputs_analyse_every_free_pixel_by_default(fashion_unit5):
    optimum = fashion_unit5.optimum
    free = ((optimum > 0.02) & (optimum < 0.98)).sum()
    assert fashion_unit5.recipe.params["resolution"] is None
    assert fashion_unit5.recipe.params["free_coordinates"] == int(free)


def test_too_few_free_directions_shrink_k_with_a_note(fashion_unit5):
    spec = load("convscope:fashion-cnn")
    result = invariances(spec, "conv2:5", optimum=fashion_unit5.optimum, k=4, resolution=12)
    k = result.roles.count("steepest")
    assert 1 <= k < 4 and result.roles.count("flattest") == k
    assert result.recipe.params["k_requested"] == 4 and f"k={k}" in result.recipe.params["note"]
    assert result.strips.shape[0] == 2 * k
