"""Overlap aggregation: tiles -> S x S cells, by hand-computed examples."""

from __future__ import annotations

import numpy as np
import pytest

from mscn_geo.aggregate import CellGrid, OverlapAggregator, check_stride, window_weight
from mscn_geo.errors import OptionError
from mscn_geo.tiling import TileGrid


def _feed_row(agg: OverlapAggregator, row: int, probs: dict[tuple[int, int], list[float]]):
    for (r, c), p in probs.items():
        if r == row:
            agg.add(r, c, np.array(p, np.float32))
    return list(agg.ready())


def test_three_by_three_cells_by_hand() -> None:
    # 96 x 96 px, tiles of 64 at stride 32: 2 x 2 tiles, 3 x 3 cells of 32 px.
    grid = TileGrid(96, 96, 64, 32)
    tiles = {(0, 0): [1.0, 0.0], (0, 1): [0.1, 0.9], (1, 0): [0.6, 0.4], (1, 1): [0.2, 0.8]}
    expected = np.array(
        [
            [[1.0, 0.0], [0.55, 0.45], [0.1, 0.9]],  # top cells: one or two tiles each
            [[0.8, 0.2], [0.475, 0.525], [0.15, 0.85]],  # centre cell: all four tiles
            [[0.6, 0.4], [0.4, 0.6], [0.2, 0.8]],
        ]
    )
    for weighting in ("uniform", "hann", "gaussian"):  # symmetric at T/S = 2: equal weights
        agg = OverlapAggregator(grid, 2, weighting)
        first = _feed_row(agg, 0, tiles)
        # After tile row 0, only cell row 0 is final: tile row 1 still reaches cell rows 1-2.
        assert [s.row0 for s in first] == [0] and first[0].probs.shape == (1, 3, 2)
        rest = _feed_row(agg, 1, tiles)
        assert [s.row0 for s in rest] == [1] and agg.done
        cells = np.concatenate([first[0].probs, rest[0].probs])
        np.testing.assert_allclose(cells, expected, atol=1e-6)
        np.testing.assert_array_equal(cells.argmax(-1), [[0, 0, 1], [0, 1, 1], [0, 1, 1]])


def test_hann_weights_at_four_cells_per_tile() -> None:
    # T = 128, S = 32: cell centres at 16, 48, 80, 112 px of a tile.
    w = window_weight(np.array([16, 48, 80, 112]), 128, "hann")
    np.testing.assert_allclose(w, [0.1464466, 0.8535534, 0.8535534, 0.1464466], atol=1e-7)
    # One row of tiles over a 256 x 128 scene: cell 3 (x 96..128) lies in the tiles at
    # x = 0, 32, 64, 96, at offsets 112, 80, 48, 16 -> weights w[3], w[2], w[1], w[0].
    grid = TileGrid(256, 128, 128, 32)
    agg = OverlapAggregator(grid, 2, "hann")
    values = [0.0, 1.0, 0.0, 1.0, 0.0]  # p(class 0) of the tiles at x = 0, 32, ..., 128
    for c, v in enumerate(values):
        agg.add(0, c, np.array([v, 1 - v]))
    (strip,) = list(agg.ready())
    cell3 = (w[3] * 0 + w[2] * 1 + w[1] * 0 + w[0] * 1) / w.sum()
    np.testing.assert_allclose(strip.probs[:, 3, 0], cell3, atol=1e-6)
    # Cell 0 lies only in the first tile.
    np.testing.assert_allclose(strip.probs[:, 0, 0], 0.0)


def test_edges_cells_cut_and_shifted_tiles() -> None:
    # 100 px wide, T 64, S 32: tiles at x 0, 32, 36 (shifted to end on the edge);
    # cells [0,32) [32,64) [64,96) [96,100).
    grid = TileGrid(100, 64, 64, 32)
    assert grid.col_offsets == [0, 32, 36]
    agg = OverlapAggregator(grid, 3, "uniform")
    eye = np.eye(3)
    for c in range(3):
        agg.add(0, c, eye[c])
    (strip,) = list(agg.ready())
    assert strip.probs.shape == (2, 4, 3)
    np.testing.assert_allclose(strip.probs[0, 0], eye[0])  # only tile x=0
    np.testing.assert_allclose(strip.probs[0, 1], (eye[0] + eye[1]) / 2)
    np.testing.assert_allclose(strip.probs[0, 2], (eye[1] + eye[2]) / 2)  # [64,96) in 32 and 36
    np.testing.assert_allclose(strip.probs[0, 3], eye[2])  # the cut cell: only the shifted tile
    cells = CellGrid(100, 64, 32)
    painted = cells.paint(strip.probs.argmax(-1), 0)
    assert painted.shape == (64, 100)
    assert (painted[:, 96:] == 2).all() and (painted[:, :32] == 0).all()


def test_stride_equal_tile_is_the_ownership_rule() -> None:
    for width, height in [(200, 130), (64, 64), (33, 90), (300, 257)]:
        grid = TileGrid(width, height, 64, 64)
        rows, cols = grid.shape
        rng = np.random.default_rng(width)
        probs = rng.dirichlet(np.ones(5), size=rows * cols).astype(np.float32)
        probs[rng.random(rows * cols) < 0.2] = np.nan  # skipped tiles
        agg = OverlapAggregator(grid, 5, "hann")
        agg.add_many(np.repeat(np.arange(rows), cols), np.tile(np.arange(cols), rows), probs)
        strips = list(agg.ready())
        cells = np.concatenate([s.probs for s in strips])
        assert cells.shape == (rows, cols, 5)
        # Exactly each tile's float32 probabilities (NaN where skipped).
        np.testing.assert_array_equal(cells, probs.reshape(rows, cols, 5))
        classes = np.where(np.isnan(probs[:, 0]), 255, np.nan_to_num(probs).argmax(1))
        classes = classes.astype(np.uint8).reshape(rows, cols)
        cell_classes = np.where(np.isnan(cells[..., 0]), 255, np.nan_to_num(cells).argmax(-1))
        painted = CellGrid(width, height, 64).paint(cell_classes.astype(np.uint8), 0)
        np.testing.assert_array_equal(painted, grid.paint(classes, 0, height))


def test_memory_is_bounded_by_tile_rows() -> None:
    grid = TileGrid(64, 5000, 64, 16)  # 310 tile rows, 4 cells per tile side
    agg = OverlapAggregator(grid, 2)
    rows, cols = grid.shape
    emitted, peak = 0, 0
    for r in range(rows):
        for c in range(cols):
            agg.add(r, c, np.array([0.3, 0.7]))
        peak = max(peak, agg.pending_rows())
        emitted += sum(s.probs.shape[0] for s in agg.ready())
    assert emitted == CellGrid(64, 5000, 16).shape[0] and agg.done
    assert peak <= 64 // 16 + 1


def test_bad_stride_and_double_reports() -> None:
    with pytest.raises(OptionError, match="stride must divide the tile size"):
        check_stride(256, 96)
    with pytest.raises(OptionError, match="stride must divide the tile size"):
        OverlapAggregator(TileGrid(200, 200, 64, 48), 2)
    agg = OverlapAggregator(TileGrid(128, 64, 64, 64), 2)
    agg.add(0, 0, None)
    agg.add(0, 1, None)
    with pytest.raises(ValueError, match="twice"):
        agg.add(0, 0, None)


@pytest.mark.parametrize("extra", [(), (3,)])
def test_paint_gives_each_pixel_its_cells_value(extra):
    """Cell rows from the 4th, a last row cut by the scene's height, a last column
    cut by its width, per-cell vectors too: pixel (y, x) gets cell (y // S, x // S)."""
    cells = CellGrid(width=203, height=150, size=16)
    values = np.random.default_rng(0).integers(0, 250, (7, 13, *extra)).astype(np.uint8)
    painted = cells.paint(values, 3)  # cell rows 3..9: pixel rows 48..150
    y, x = np.mgrid[48:150, 0:203]
    np.testing.assert_array_equal(painted, values[y // 16 - 3, x // 16])


def test_pixels_per_cell_counts_each_cells_pixels():
    """Edge cells (the scene's last rows and columns) are smaller; with a mask only
    its True pixels count."""
    cells = CellGrid(width=203, height=150, size=16)
    whole = cells.pixels_per_cell(8, 2)  # cell rows 8..9: pixel rows 128..150
    assert whole.shape == (2, 13)
    assert whole[0, 0] == 256 and whole[1, 0] == 16 * 6 and whole[0, -1] == 16 * 11
    assert whole[1, -1] == 6 * 11 and whole.sum() == 22 * 203
    valid = np.random.default_rng(1).random((22, 203)) < 0.7
    got = cells.pixels_per_cell(8, 2, valid)
    y, x = np.mgrid[0:22, 0:203]
    want = np.zeros((2, 13), np.int64)
    np.add.at(want, (y[valid] // 16, x[valid] // 16), 1)
    np.testing.assert_array_equal(got, want)
