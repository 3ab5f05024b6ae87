"""analysis.tsne: the grid assignment is a permutation and optimal (brute force on tiny cases); the same seed gives the
same embedding; separated clusters stay separated; results draw with class colours, save and load back."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch import nn

from convscope.analysis import TSNE, tsne
from convscope.analysis.tsne import cell_centres, embed, grid_assignment, grid_shape
from convscope.data import ArrayDataset
from convscope.errors import OptionError
from convscope.models import spec_for_module
from convscope.render.embedding import class_colors, thumbnail_grid

pytestmark = pytest.mark.usefixtures("one_thread")


def _brute_force(xy: np.ndarray, shape: tuple[int, int]) -> float:
    """The smallest summed squared distance over every injective item -> cell map, computed independently."""
    rows, cols = shape
    unit = (xy - xy.min(0)) / (xy.max(0) - xy.min(0))
    centres = np.array([((c + 0.5) / cols, 1 - (r + 0.5) / rows) for r in range(rows) for c in range(cols)])
    cost = ((unit[:, None, :] - centres[None, :, :]) ** 2).sum(-1)  # (items, cells)
    maps = np.array(list(itertools.permutations(range(rows * cols), len(xy))))
    return float(cost[np.arange(len(xy)), maps].sum(1).min())


@pytest.mark.parametrize("count, shape", [(6, (2, 3)), (5, (2, 3)), (7, (2, 4))])
def test_grid_assignment_is_a_permutation_and_optimal(count, shape):
    for seed in range(3):
        xy = np.random.default_rng(seed).normal(size=(count, 2))
        cells = grid_assignment(xy, shape)
        assert len(set(cells.tolist())) == count and cells.min() >= 0 and cells.max() < shape[0] * shape[1]
        unit = (xy - xy.min(0)) / (xy.max(0) - xy.min(0))
        cost = ((unit - cell_centres(shape)[cells]) ** 2).sum()
        assert cost == pytest.approx(_brute_force(xy, shape), abs=1e-12)


def test_grid_keeps_corners_and_orientation():
    xy = np.array([[0.0, 1.0], [1.0, 1.0], [0.0, 0.0], [1.0, 0.0]])  # top-left, top-right, bottom-left, bottom-right
    assert grid_assignment(xy, (2, 2)).tolist() == [0, 1, 2, 3]
    assert grid_shape(10) == (3, 4) and grid_shape(16) == (4, 4) and grid_shape(1) == (1, 1)
    with pytest.raises(OptionError, match="fewer cells"):
        grid_assignment(np.zeros((5, 2)), (2, 2))


def _blobs(seed: int = 0, per: int = 30, dims: int = 64) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=10.0, size=(4, dims))
    x = np.concatenate([c + rng.normal(size=(per, dims)) for c in centres])
    return x, np.repeat(np.arange(4), per)


def test_same_seed_same_embedding_and_clusters_stay_apart():
    x, labels = _blobs()
    a, b, c = embed(x, seed=0), embed(x, seed=0), embed(x, seed=1)
    assert a.shape == (120, 2) and a.dtype == np.float32
    assert np.array_equal(a, b)  # bit for bit
    assert not np.array_equal(a, c)
    distances = ((a[:, None] - a[None]) ** 2).sum(-1)
    np.fill_diagonal(distances, np.inf)
    neighbours = np.argsort(distances, axis=1)[:, :5]
    assert (labels[neighbours] == labels[:, None]).mean() > 0.95


def test_perplexity_and_size_errors():
    x, _ = _blobs(per=3)
    with pytest.raises(OptionError, match="perplexity"):
        embed(x, perplexity=30)
    with pytest.raises(OptionError, match="at least 5"):
        embed(x[:4])


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.fc = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))


def test_tsne_result_draws_class_frames_saves_and_loads(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 12)
    images = rng.integers(0, 256, (36, 10, 10, 3), dtype=np.uint8)
    images[labels == 1] //= 4  # classes differ in brightness, so codes differ
    data = ArrayDataset(images, labels, ["dark", "mid", "light"], name="toy")
    result = tsne(spec_for_module(Net(), input_size=(10, 10)), data, limit=None, seed=0, thumb=8)
    assert len(result) == 36 and result.layer == "fc:input" and result.grid_shape == (6, 6)
    assert result.thumbnails.shape == (36, 8, 8, 3) and sorted(result.cells.tolist()) == list(range(36))
    picture = result.save(tmp_path / "t.png", layout="grid", cell=16)
    back = TSNE.load(picture)
    assert torch.equal(back.embedding, result.embedding) and torch.equal(back.cells, result.cells)
    assert torch.equal(back.thumbnails, result.thumbnails) and back.sources == result.sources
    assert back.recipe.params["perplexity"] == result.recipe.params["perplexity"]
    assert result.to_image(layout="scatter", size=300).size[0] >= 300
    items = result.to_dict()["items"]
    assert {(i["row"], i["col"]) for i in items} == {divmod(int(c), 6) for c in result.cells}


def test_grid_frames_have_the_class_colour():
    thumbs = np.full((3, 8, 8, 1), 200, dtype=np.uint8)
    image = np.asarray(thumbnail_grid(np.array([3, 0, 1]), (2, 2), thumbs, cell=16, labels=np.array([0, 2, 1]),
                                      names=["a", "b", "c"]))
    colours = class_colors(3)
    assert tuple(image[0, 0]) == tuple(colours[2])  # cell 0 holds item 1 (class 2)
    assert tuple(image[0, 16]) == tuple(colours[1])  # cell 1 holds item 2 (class 1)
    assert tuple(image[16, 16]) == tuple(colours[0])  # cell 3 holds item 0 (class 0)
    assert tuple(image[16, 0]) == (235, 235, 235)  # cell 2 is empty
    assert tuple(image[8, 8]) == (200, 200, 200)  # inside a frame: the picture
    assert image.shape[0] > 32  # the legend is drawn below the grid
    assert len(np.unique(class_colors(40), axis=0)) == 40
