"""Attribution pictures (issue 10): per-image colour scales by default, the signed-gradient RGB view of the
literature, and titles that fit however narrow the panel."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import convscope.attribution as A
from convscope.render._text import text_width, wrap
from convscope.render.overlay import _tile, attribution_panel, signed_rgb

from test_attribution_evaluate import _spec
from test_attribution_properties import inputs


def _scaled(result: A.Attribution, factors) -> A.Attribution:
    """The same result with each input's map and attributions multiplied by its factor."""
    f = torch.tensor(factors, dtype=result.map.dtype).view(-1, 1, 1)
    return A.Attribution(result.attributions * f.unsqueeze(1), result.map * f, result.inputs, result.scores,
                         result.classes, result.method, result.recipe, spec=result.spec)


def test_signed_rgb_is_grey_at_zero_and_follows_the_sign_per_channel():
    g = torch.zeros(3, 4, 4)
    g[0, 0, 0], g[1, 0, 1], g[2, 0, 2] = 2.0, -2.0, 1.0
    rgb, info = signed_rgb(g, scale=2.0)
    assert tuple(rgb[3, 3]) == (128, 128, 128)  # zero gradient: mid grey
    assert tuple(rgb[0, 0]) == (255, 128, 128) and tuple(rgb[0, 1]) == (128, 0, 128)
    assert rgb[0, 2, 2] == round(255 * 0.75)
    assert info["lo"] == -2.0 and info["hi"] == 2.0 and info["cmap"] == "gray"
    grey, _ = signed_rgb(g[:1])  # one channel: a grey image
    assert np.array_equal(grey[..., 0], grey[..., 2])


def test_to_image_rgb_view_draws_the_pixel_gradient():
    spec, x = _spec(), inputs(1)
    result = A.guided_backprop(spec, x, target=1)
    picture = np.asarray(result.to_image(view="rgb", bar=False, cell=16, scale=1.0))
    gradient = result.attributions[0] / torch.tensor(spec.std, dtype=torch.float64).view(3, 1, 1)
    expected = (np.clip(gradient.numpy(), -1, 1) * 0.5 + 0.5).transpose(1, 2, 0) * 255
    assert np.abs(picture[:16, :16].astype(float) - expected).max() <= 0.51
    with pytest.raises(ValueError, match="view"):
        result.to_image(view="colour")


def test_panel_normalizes_each_image_by_default():
    """Issue 10: one colour scale across images left one image's map blank beside another's. By default, the first
    image's row is drawn exactly as if it were alone, whatever the second image's magnitude."""
    spec, x = _spec(), inputs(2)
    result = _scaled(A.saliency(spec, x, target=1), [1.0, 1000.0])
    first = A.Attribution(result.attributions[:1], result.map[:1], result.inputs[:1], result.scores[:1],
                          result.classes[:1], result.method, result.recipe, spec=spec)
    both, alone = np.asarray(attribution_panel([result], cell=32)), np.asarray(attribution_panel([first], cell=32))
    assert np.array_equal(both[:alone.shape[0]], alone)
    shared = np.asarray(attribution_panel([result], cell=32, normalization="method"))
    alone = np.asarray(attribution_panel([first], cell=32, normalization="method"))
    assert not np.array_equal(shared[:alone.shape[0]], alone)


def test_panel_shows_guided_backprop_in_rgb_by_default():
    spec, x = _spec(), inputs(1)
    guided = A.guided_backprop(spec, x, target=1)
    default = np.asarray(attribution_panel([guided], cell=32))
    assert np.array_equal(default, np.asarray(attribution_panel([guided], cell=32, views={"guided": "rgb"})))
    assert not np.array_equal(default, np.asarray(attribution_panel([guided], cell=32, views={"guided": "heatmap"})))


def test_wrap_keeps_every_line_inside_the_width():
    lines = wrap("torchvision:mobilenet_v2@IMAGENET1K_V1 (normalization: each map scaled on its own)\nnext", 13, 90)
    assert all(text_width(line, 13) <= 90 for line in lines) and lines[-1] == "next"
    assert "".join(lines).replace(" ", "").startswith("torchvision:mobilenet_v2@IMAGENET1K_V1")


@pytest.mark.parametrize("cell", [64, 96])
def test_panel_titles_fit_at_two_columns(cell):
    """Issue 10: at two columns the panel's heading ran past its right edge and was cut off."""
    spec, x = _spec(), inputs(1)
    results = [A.saliency(spec, x, target=1), A.guided_gradcam(spec, x, target=1, layer="conv2")]
    panel = attribution_panel(results, title="torchvision:mobilenet_v2@IMAGENET1K_V1", columns=2, cell=cell,
                              image_labels=["a-long-file-name-for-a-photo.png\nEgyptian cat (285) p=0.71"],
                              captions=[["del 0.018  ins 0.267"], ["del 0.019  ins 0.266"]])
    pixels = np.asarray(panel.convert("L"))
    assert pixels[:, -3:].min() == 255  # no text reaches the right edge


def test_tile_names_and_captions_wrap_inside_the_tile():
    picture = Image.new("RGB", (48, 48), "black")
    tile = _tile("guided-gradcam (signed, grey = 0)", picture, None, "del 0.018  ins 0.267", 48)
    pixels = np.asarray(tile.convert("L"))
    top = int(np.flatnonzero(pixels.max(1) == 0)[0])  # the name band above the (black) picture
    assert top > 17  # more than one line
    assert pixels[:top, -2:].min() == 255 and pixels[top + 48:, -2:].min() == 255


def _check(correlations, threshold=0.5):
    """A stand-in `RandomizationCheck` (K checkpoints, B inputs) for the pictures: only what they read."""
    from types import SimpleNamespace

    corr = torch.tensor(correlations, dtype=torch.float64)
    flagged = bool((corr.abs().mean(1) > threshold).any())
    return SimpleNamespace(curve=corr.abs().mean(1), correlations=corr, depth=list(range(1, len(corr) + 1)),
                           threshold=threshold, flagged=flagged)


def _has(picture: Image.Image, colour) -> bool:
    return bool((np.asarray(picture.convert("RGB")) == np.array(colour, dtype=np.uint8)).all(-1).any())


def test_cascade_plot_marks_each_checkpoint_above_the_threshold():
    """Issue 10: the picture shows the cascade curve. Each checkpoint is a dot, red above the threshold, green
    at or below it, and the curve's dots sit at heights ordered as the values."""
    from convscope.render.trust import _BAD, _GOOD, cascade_plot

    survives = cascade_plot(_check([[0.9, 0.8], [-0.1, 0.1]]))  # survives the top layer, not the next
    assert _has(survives, _BAD) and _has(survives, _GOOD)
    passes = cascade_plot(_check([[0.2, -0.1], [0.0, 0.1]]))
    assert not _has(passes, _BAD) and _has(passes, _GOOD)
    flipped = cascade_plot(_check([[-0.9, -0.8], [0.1, 0.0]]))  # a negative map is above the threshold too
    assert _has(flipped, _BAD)

    def red_height(picture):
        rows = np.flatnonzero((np.asarray(picture) == np.array(_BAD, dtype=np.uint8)).all(-1).any(1))
        return rows.mean()

    higher, lower = cascade_plot(_check([[0.95, 0.95]])), cascade_plot(_check([[0.6, 0.6]]))
    assert red_height(higher) < red_height(lower)  # a larger similarity is drawn higher
