"""Panels: normalization choices do what they say, small tiles stay crisp, labels and layout follow the data."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from convscope.render.core import colorize, normalize
from convscope.render.grids import (
    feature_grid,
    filter_matrix,
    filter_tiles,
    upscale_factor,
    vector_strip,
)


def _tile(image, index: int, side: int, columns: int, pad: int = 4, band: int = 14, header: int = 0) -> np.ndarray:
    """Pixels of tile `index` in a grid drawn without a title (layout of render.grids._tile_grid)."""
    a = np.asarray(image)
    r, c = divmod(index, columns)
    y, x = header + pad + r * (side + band + pad), pad + c * (side + pad)
    return a[y : y + side, x : x + side]


def test_per_channel_norm_ignores_scale_and_shared_norm_keeps_it():
    base = torch.rand(5, 6, generator=torch.Generator().manual_seed(0))
    maps = torch.stack([base, 3 * base])  # same pattern, three times stronger
    side = 6 * int(upscale_factor(5, 6))
    per_channel = feature_grid(maps, norm="channel", columns=2)
    assert np.array_equal(_tile(per_channel, 0, side, 2)[:5 * 10], _tile(per_channel, 1, side, 2)[:5 * 10])
    shared = feature_grid(maps, norm="shared", columns=2)
    weak = _tile(shared, 0, side, 2)[: 5 * int(upscale_factor(5, 6))].astype(int).sum()
    strong = _tile(shared, 1, side, 2)[: 5 * int(upscale_factor(5, 6))].astype(int).sum()
    assert strong > weak  # viridis gets brighter with the value


def test_small_maps_are_upscaled_with_nearest_and_big_ones_shrunk():
    assert upscale_factor(3, 3) == 19 and upscale_factor(28, 28) == 2 and upscale_factor(256, 128) == 0.5
    values = torch.tensor([[0.0, 1.0], [0.5, 0.25]])
    image = feature_grid(values[None], norm="channel", columns=1)
    tile = _tile(image, 0, 2 * 28, 1)
    colours = {tuple(p) for p in tile.reshape(-1, 3)}
    assert len(colours) == 4  # nearest neighbour: exactly the four values' colours, no blending


def test_dead_channels_are_labelled_in_red():
    maps = torch.rand(3, 4, 4)
    maps[1] = 0
    marked = np.asarray(feature_grid(maps, dead=[1], columns=3))
    plain = np.asarray(feature_grid(maps, columns=3))
    red = (marked[..., 0] > 150) & (marked[..., 1] < 110) & (marked[..., 2] < 110)
    assert red.any() and not ((plain[..., 0] > 150) & (plain[..., 1] < 110) & (plain[..., 2] < 110)).any()


def test_filter_tiles_zero_is_mid_grey_and_colour_follows_sign():
    w = torch.zeros(2, 3, 3, 3)
    w[0, 0] = 1.0  # positive red channel only
    w[1, 0, 1, 1] = 1.0  # a single positive red centre pixel, zero elsewhere
    image = np.asarray(filter_tiles(w, labels=["a", "b"], columns=2))
    side = 3 * int(upscale_factor(3, 3, target=48))
    red_tile = _tile(image, 0, side, 2)
    assert (red_tile[..., 0] == 255).all() and (red_tile[..., 1] == 128).all() and (red_tile[..., 2] == 128).all()
    centre = _tile(image, 1, side, 2)
    assert tuple(centre[0, 0]) == (128, 128, 128)  # a zero weight
    assert tuple(centre[side // 2, side // 2]) == (255, 128, 128)
    with pytest.raises(ValueError):
        filter_tiles(torch.zeros(2, 4, 3, 3), labels=["a", "b"])


def test_filter_matrix_has_a_row_per_filter_and_a_column_per_input():
    w = torch.zeros(3, 5, 3, 3)
    for i in range(3):
        w[i, : i + 2] = 1.0  # filter i: the first i+2 inputs positive, the rest zero
    image = np.asarray(filter_matrix(w, row_labels=["0", "1", "2"], column_labels=list("abcde")))
    red = (image[..., 0] > 150) & (image[..., 2] < 100)
    rows = np.flatnonzero(red.any(axis=1))
    # three bands of red rows (one per filter, separated by padding) above the colour bar's red end
    bands = np.split(rows, np.flatnonzero(np.diff(rows) > 1) + 1)
    assert len(bands) == 4
    bands = bands[:3]
    widths = [red[band[len(band) // 2]].sum() for band in bands]
    assert widths[0] < widths[1] < widths[2]


def test_vector_strip_bars_and_long_vectors():
    short = np.asarray(vector_strip(torch.tensor([1.0, -1.0, 0.5])))
    blue = (short[..., 2] > 150) & (short[..., 0] < 100)
    red = (short[..., 0] > 150) & (short[..., 2] < 100)
    assert blue.any() and red.any()
    assert np.flatnonzero(blue.any(axis=1)).min() > np.flatnonzero(red.any(axis=1)).max()  # negative below zero
    long = vector_strip(torch.arange(1000, dtype=torch.float32))
    assert long.height > 16 * 10  # 1000 values wrap into 16 rows of 64 cells


def test_colorize_and_normalize_ends():
    assert tuple(colorize(np.array([[0.0]]), "gray")[0, 0]) == (0, 0, 0)
    assert tuple(colorize(np.array([[1.0]]), "gray")[0, 0]) == (255, 255, 255)
    np.testing.assert_allclose(normalize(np.array([-2.0, 0.0, 1.0]), "absmax"), [0.0, 0.5, 0.75])
