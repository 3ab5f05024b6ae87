"""Assembling slices of feature maps for batches of windows, each slice from a clean map and a window's patch.

Every step's values for a batch live in one flat, channels-last table (rows = positions, columns = channels):

    [ clean map (H*W rows) | a row of zeros | a row of -inf | patch of window 0 | patch of window 1 | ... ]

so any slice of the occluded map, for all windows at once, is one `index_select` of rows: a position inside the
window's patch reads the patch, any other position inside the map reads the clean map, and a position outside the
map reads the padding row (zeros for convolutions, -inf for max pooling). The indices depend only on the geometry,
never on the image, so they are computed once per batch of windows (`gather_index`) and reused.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["gather_index", "input_index", "source_table", "clean_table", "gather"]

ZERO_ROW, NEG_INF_ROW = 0, 1  # offsets past the clean rows


def gather_index(shape: tuple[int, int], patch_offset: np.ndarray, patch_size: tuple[int, int],
                 out_offset: np.ndarray, out_size: tuple[int, int], fill: float | None) -> np.ndarray:
    """(N*h*w,) row indices into `source_table` for the slice at `out_offset` (N, 2) of `out_size` (h, w) of a map
    of `shape` (H, W), whose window n holds a patch of `patch_size` at `patch_offset[n]`. Positions outside the map
    read the `fill` row (0 or -inf); `fill=None` asserts there are none."""
    H, W = shape
    ph, pw = patch_size
    h, w = out_size
    n = len(out_offset)
    rows = out_offset[:, :1] + np.arange(h)[None]  # (N, h)
    cols = out_offset[:, 1:] + np.arange(w)[None]  # (N, w)
    row_in = (rows >= 0) & (rows < H)
    col_in = (cols >= 0) & (cols < W)
    pr = rows - patch_offset[:, :1]
    pc = cols - patch_offset[:, 1:]
    in_patch = ((pr >= 0) & (pr < ph))[:, :, None] & ((pc >= 0) & (pc < pw))[:, None, :]
    clean = np.clip(rows, 0, H - 1)[:, :, None] * W + np.clip(cols, 0, W - 1)[:, None, :]
    patch = (H * W + 2 + np.arange(n)[:, None, None] * (ph * pw)
             + np.clip(pr, 0, ph - 1)[:, :, None] * pw + np.clip(pc, 0, pw - 1)[:, None, :])
    index = np.where(in_patch, patch, clean)
    outside = ~(row_in[:, :, None] & col_in[:, None, :])
    if outside.any():
        if fill is None:
            raise AssertionError("a slice reaches outside the map where no padding is defined")
        index = np.where(outside, H * W + (NEG_INF_ROW if fill == float("-inf") else ZERO_ROW), index)
        if fill not in (0.0, float("-inf")):
            raise AssertionError(f"padding value {fill} is not supported")
    return index.reshape(-1).astype(np.int32)  # tables stay far below 2**31 rows; half the memory of int64


def clean_table(clean: torch.Tensor) -> torch.Tensor:
    """(1, C, H, W) clean map -> (H*W + 2, C) rows: positions, then a zero row and a -inf row."""
    c = clean.shape[1]
    rows = clean[0].permute(1, 2, 0).reshape(-1, c)
    pads = torch.tensor([0.0, float("-inf")], dtype=clean.dtype, device=clean.device).view(2, 1).expand(2, c)
    return torch.cat([rows, pads])


def source_table(clean_rows: torch.Tensor, patch: torch.Tensor) -> torch.Tensor:
    """The clean table followed by the patches (N, C, ph, pw) as rows."""
    c = patch.shape[1]
    return torch.cat([clean_rows, patch.permute(0, 2, 3, 1).reshape(-1, c)])


def gather(table: torch.Tensor, index: torch.Tensor, count: int, size: tuple[int, int]) -> torch.Tensor:
    """Rows `index` of `table` as an (N, C, h, w) batch (channels-last in memory)."""
    c = table.shape[1]
    return table.index_select(0, index).view(count, size[0], size[1], c).permute(0, 3, 1, 2)


def input_index(shape: tuple[int, int], windows: np.ndarray, offset: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(N*h*w,) rows into `[image (H*W rows) | 2 padding rows | baseline (H*W rows)]` giving each window's occluded
    image on its extent: baseline inside the window rectangle (N, 4: r0, r1, c0, c1), the image elsewhere."""
    H, W = shape
    rows = offset[:, :1] + np.arange(size[0])[None]
    cols = offset[:, 1:] + np.arange(size[1])[None]
    inside = (((rows >= windows[:, :1]) & (rows < windows[:, 1:2]))[:, :, None]
              & ((cols >= windows[:, 2:3]) & (cols < windows[:, 3:4]))[:, None, :])
    position = rows[:, :, None] * W + cols[:, None, :]
    return np.where(inside, position + H * W + 2, position).reshape(-1).astype(np.int32)
