"""The tile grid: coverage, shifted edges, padding, pixel ownership."""

from __future__ import annotations

import numpy as np
import pytest

from mscn_geo.errors import OptionError
from mscn_geo.tiling import TileGrid, tile_grid


def _offsets(tiles, axis):
    return sorted({int(t.window.col_off if axis == "x" else t.window.row_off) for t in tiles})


def test_shifted_last_row_and_column() -> None:
    tiles = tile_grid(200, 130, 64)
    assert _offsets(tiles, "x") == [0, 64, 128, 136]
    assert _offsets(tiles, "y") == [0, 64, 66]
    assert len(tiles) == 12
    assert all(t.window.width == 64 and t.window.height == 64 for t in tiles)
    assert not any(t.padded for t in tiles)
    last = tiles[-1]
    assert (last.row, last.col) == (2, 3)
    assert last.window.col_off + last.window.width == 200
    assert last.window.row_off + last.window.height == 130


def test_exact_multiple_has_no_shift() -> None:
    tiles = tile_grid(128, 192, 64)
    assert _offsets(tiles, "x") == [0, 64]
    assert _offsets(tiles, "y") == [0, 64, 128]


def test_small_scene_gives_one_padded_tile_per_short_dimension() -> None:
    tiles = tile_grid(50, 100, 64)
    assert len(tiles) == 2
    assert [(t.window.col_off, t.window.row_off) for t in tiles] == [(0, 0), (0, 36)]
    assert all(t.padded and t.window.width == 50 and t.window.height == 64 for t in tiles)


def test_stride_overlap() -> None:
    assert _offsets(tile_grid(100, 64, 64, stride=16), "x") == [0, 16, 32, 36]


@pytest.mark.parametrize(("tile", "stride"), [(16, 16), (64, 65), (64, 0)])
def test_bad_tiling_is_an_option_error(tile: int, stride: int) -> None:
    with pytest.raises(OptionError):
        tile_grid(100, 100, tile, stride)


@pytest.mark.parametrize(
    ("width", "height", "tile", "stride"),
    [(200, 130, 64, 64), (64, 64, 64, 64), (50, 300, 64, 48), (301, 257, 64, 17), (33, 33, 64, 64)],
)
def test_windows_cover_scene_and_own_their_cells(width, height, tile, stride) -> None:
    grid = TileGrid(width, height, tile, stride)
    rows, cols = grid.shape
    covered = np.zeros((height, width), dtype=int)
    for t in grid.tiles():
        w = t.window
        assert w.col_off >= 0 and w.col_off + w.width <= width
        assert w.row_off >= 0 and w.row_off + w.height <= height
        covered[w.row_off : w.row_off + w.height, w.col_off : w.col_off + w.width] += 1
    assert covered.min() >= 1  # every pixel is classified by some tile

    # Each pixel's owner tile contains it, and owners are in grid order.
    tiles = {(t.row, t.col): t.window for t in grid.tiles()}
    row_owner, col_owner = grid.row_owner(), grid.col_owner()
    assert row_owner.max() == rows - 1 and col_owner.max() == cols - 1
    assert np.all(np.diff(row_owner) >= 0) and np.all(np.diff(col_owner) >= 0)
    for y in range(height):
        for x in (0, width // 2, width - 1):
            w = tiles[(row_owner[y], col_owner[x])]
            assert w.row_off <= y < w.row_off + w.height
            assert w.col_off <= x < w.col_off + w.width


def test_paint_is_grid_order_painting_of_own_cells() -> None:
    grid = TileGrid(200, 130, 64, 64)
    rows, cols = grid.shape
    classes = np.arange(rows * cols, dtype=np.uint8).reshape(rows, cols)
    # Reference: paint whole tiles in grid order, later tiles only over pixels
    # not painted yet by their own (unshifted) cell... spelled out with cells.
    expected = np.full((130, 200), 255, dtype=np.uint8)
    for r in range(rows):
        for c in range(cols):
            y0, x0 = r * 64, c * 64
            y1 = 130 if r == rows - 1 else y0 + 64
            x1 = 200 if c == cols - 1 else x0 + 64
            expected[y0:y1, x0:x1] = classes[r, c]
    np.testing.assert_array_equal(grid.paint(classes, 0, 130), expected)
    np.testing.assert_array_equal(grid.paint(classes, 100, 130), expected[100:130])
    # Concretely: the overlap of the shifted last column (x 136..191) belongs to column 2.
    assert grid.paint(classes, 0, 1)[0, 150] == classes[0, 2]
    assert grid.paint(classes, 0, 1)[0, 199] == classes[0, 3]
