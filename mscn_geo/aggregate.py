"""Overlap aggregation: per-tile class probabilities -> per-cell probabilities, streamed.

With a stride S smaller than the tile size T (T a multiple of S), the map is a
grid of S x S *cells* and each cell gets the weighted mean of the class
probabilities of every tile that covers it. The rule (README, "Tiling, edges
and nodata"):

* Cells are S-aligned from the scene origin: cell (i, j) is pixel rows
  ``[i*S, (i+1)*S)`` and columns ``[j*S, (j+1)*S)``; the last row/column of
  cells is cut at the scene edge.
* A cell's tiles are the tiles whose window *fully contains* it. Interior cells
  have (T/S)^2 of them; the shifted last row/column of tiles (which ends exactly
  on the scene edge) adds itself to the cells it contains. Every cell has at
  least one tile.
* A tile's weight for a cell is the tile's window function evaluated at the
  cell's centre: ``uniform`` (1; the default, measured best in
  ``benchmarks/bench_overlap.py``), ``hann`` (``sin^2(pi u / T)``, u the cell
  centre's offset in the tile) or ``gaussian`` (sigma T/4), separable in x and
  y. Tiles skipped as all-nodata add nothing; a cell with no classified tile is
  nodata.
* With S = T every cell is exactly today's owned cell of exactly one tile, so
  the map is the per-tile map (sums are kept in float64 so ``p * w / w`` rounds
  back to the tile's float32 probabilities exactly).

Streaming: tiles arrive in grid order (a batch may hold the end of one tile row
and the start of the next; all-nodata tiles may be reported before the batch
holding earlier tiles). Only the cell rows that an unfinished tile row can
still add to are kept; once every tile of a tile row has been reported, the
cell rows no later tile reaches are complete and handed out as a
:class:`CellStrip`. Memory is about (T/S + 1) cell rows x cell columns x
classes float64, whatever the scene height.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from affine import Affine

from mscn_geo.errors import OptionError
from mscn_geo.tiling import TileGrid

__all__ = [
    "WEIGHTINGS",
    "CellGrid",
    "CellStrip",
    "OverlapAggregator",
    "check_stride",
    "window_weight",
]

#: Window functions a tile can weight its cells with (``--overlap-weight``).
WEIGHTINGS = ("uniform", "hann", "gaussian")
DEFAULT_WEIGHTING = "uniform"


def check_stride(tile: int, stride: int) -> None:
    """Raise :class:`OptionError` unless ``stride`` divides ``tile`` (cells must tile tiles)."""
    if stride >= 1 and tile % stride:
        raise OptionError(
            f"stride must divide the tile size: stride {stride} does not divide "
            f"{tile} px tiles (try {_divisors_hint(tile, stride)})",
            field="stride",
        )


def _divisors_hint(tile: int, stride: int) -> str:
    divisors = [d for d in range(1, tile + 1) if tile % d == 0]
    below = max(d for d in divisors if d <= stride)
    above = min((d for d in divisors if d >= stride), default=tile)
    return " or ".join(str(d) for d in dict.fromkeys((below, above)))


def window_weight(offset: np.ndarray, tile: int, weighting: str) -> np.ndarray:
    """Weight of a tile at ``offset`` pixels from its start (any shape, float64).

    Args:
        offset: positions inside the tile, ``0 < offset < tile`` (cell centres).
        tile: the tile edge T in pixels.
        weighting: one of :data:`WEIGHTINGS`.
    """
    u = np.asarray(offset, dtype=np.float64) / tile
    if weighting == "uniform":
        return np.ones_like(u)
    if weighting == "hann":
        return np.sin(np.pi * u) ** 2
    if weighting == "gaussian":
        return np.exp(-0.5 * ((u - 0.5) / 0.25) ** 2)
    raise OptionError(
        f"overlap_weight must be one of {', '.join(WEIGHTINGS)}, got {weighting!r}",
        field="overlap_weight",
    )


@dataclass(frozen=True)
class CellGrid:
    """The S x S cells over a ``width`` x ``height`` scene (last row/column cut at the edge)."""

    width: int
    height: int
    size: int

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, cols) of cells."""
        return -(-self.height // self.size), -(-self.width // self.size)

    def pixel_rows(self, cell_row0: int, cell_row1: int) -> tuple[int, int]:
        """Scene pixel rows ``[y0, y1)`` of cell rows ``[cell_row0, cell_row1)``."""
        return cell_row0 * self.size, min(cell_row1 * self.size, self.height)

    def transform(self, scene_transform: Affine) -> Affine:
        """The cell raster's transform: the scene's, with pixels S times larger."""
        return scene_transform @ Affine.scale(self.size)

    def paint(self, cells: np.ndarray, cell_row0: int) -> np.ndarray:
        """Scene pixels of cell rows starting at ``cell_row0``.

        Args:
            cells: (rows, cols, ...) per-cell values.

        Returns:
            (y1 - y0, width, ...): every pixel gets its cell's value.
        """
        y0, y1 = self.pixel_rows(cell_row0, cell_row0 + cells.shape[0])
        # Two block copies: 100x faster than one gather with pixel index arrays
        # (15 ms per 30,000 px strip of 64 px cells), the same pixels.
        wide = np.repeat(cells, self.size, axis=1)[:, : self.width]
        return np.repeat(wide, self.size, axis=0)[: y1 - y0]

    def pixels_per_cell(
        self, cell_row0: int, cell_rows: int, valid: np.ndarray | None = None
    ) -> np.ndarray:
        """(cell_rows, cols) int64: scene pixels of each cell, or its True pixels in ``valid``
        ((y1 - y0, width) bool over the cell rows' pixel rows)."""
        y0, y1 = self.pixel_rows(cell_row0, cell_row0 + cell_rows)
        starts_y = np.arange(y0, y1, self.size)
        starts_x = np.arange(0, self.width, self.size)
        if valid is None:
            heights = np.diff(np.append(starts_y, y1))
            widths = np.diff(np.append(starts_x, self.width))
            return np.outer(heights, widths).astype(np.int64)
        # Rows first in uint16 (a cell is at most 65,535 px high) on the bytes of
        # the mask: twice as fast as summing the bools into int64.
        per_row = np.add.reduceat(valid.view(np.uint8), starts_y - y0, axis=0, dtype=np.uint16)
        return np.add.reduceat(per_row, starts_x, axis=1, dtype=np.int64)


@dataclass
class CellStrip:
    """Aggregated probabilities of whole cell rows ``[row0, row0 + len(probs))``.

    Attributes:
        row0: first cell row.
        probs: (rows, cols, classes) float32 weighted-mean probabilities; NaN
            for cells no classified tile covers (all-nodata tiles only).
    """

    row0: int
    probs: np.ndarray

    @property
    def row1(self) -> int:
        return self.row0 + self.probs.shape[0]


def _cover(offsets: list[int], extent: int, length: int, size: int) -> list[tuple[int, int]]:
    """Per tile along one axis: cells ``[first, last)`` its window fully contains."""
    spans = []
    for start in offsets:
        end = min(start + extent, length)
        first = -(-start // size)
        last = -(-length // size) if end == length else end // size
        spans.append((first, last))
    return spans


class OverlapAggregator:
    """Streams per-tile probabilities of a :class:`TileGrid` into per-cell probabilities.

    Feed every tile exactly once with :meth:`add` (``probs=None`` or NaN for a
    tile skipped as all-nodata), then take finished strips from :meth:`ready`;
    after the last tile, :meth:`ready` has handed out every cell row.
    """

    def __init__(self, grid: TileGrid, num_classes: int, weighting: str = DEFAULT_WEIGHTING):
        check_stride(grid.tile, grid.stride)
        self.grid = grid
        self.cells = CellGrid(grid.width, grid.height, grid.stride)
        self.num_classes = num_classes
        self.weighting = weighting
        s = grid.stride
        self._rows = _cover(grid.row_offsets, grid.tile, grid.height, s)
        self._cols = _cover(grid.col_offsets, grid.tile, grid.width, s)
        self._row_w = [
            self._weights(start, span, grid.height)
            for start, span in zip(grid.row_offsets, self._rows, strict=True)
        ]
        self._col_w = [
            self._weights(start, span, grid.width)
            for start, span in zip(grid.col_offsets, self._cols, strict=True)
        ]
        n_rows, n_cols = grid.shape
        self._remaining = [n_cols] * n_rows
        self._next_tile_row = 0  # first tile row with tiles still to come
        self._emitted = 0  # cell rows handed out
        self._sum: dict[int, np.ndarray] = {}  # cell row -> (cols, classes) float64
        self._weight: dict[int, np.ndarray] = {}  # cell row -> (cols,) float64

    def _weights(self, start: int, span: tuple[int, int], length: int) -> np.ndarray:
        first, last = span
        lo = np.arange(first, last) * self.cells.size
        hi = np.minimum(lo + self.cells.size, length)
        return window_weight((lo + hi) / 2 - start, self.grid.tile, self.weighting)

    def add(self, row: int, col: int, probs: np.ndarray | None) -> None:
        """Record tile (``row``, ``col``)'s class probabilities, (classes,) float."""
        if self._remaining[row] <= 0:
            raise ValueError(f"tile row {row} col {col} reported twice")
        self._remaining[row] -= 1
        if probs is None or not np.isfinite(probs).all():
            return
        (r0, r1), (c0, c1) = self._rows[row], self._cols[col]
        wy, wx = self._row_w[row], self._col_w[col]
        p = np.asarray(probs, dtype=np.float64)
        n_cols = self.cells.shape[1]
        for i, r in enumerate(range(r0, r1)):
            if r < self._emitted:
                raise ValueError(f"tile row {row} arrived after its cells were handed out")
            acc = self._sum.get(r)
            if acc is None:
                acc = self._sum[r] = np.zeros((n_cols, self.num_classes), np.float64)
                self._weight[r] = np.zeros(n_cols, np.float64)
            w = wy[i] * wx
            acc[c0:c1] += w[:, None] * p[None, :]
            self._weight[r][c0:c1] += w

    def add_many(self, rows: np.ndarray, cols: np.ndarray, probs: np.ndarray | None) -> None:
        """:meth:`add` for n tiles: ``rows``/``cols`` (n,), ``probs`` (n, classes) or None."""
        for i, (r, c) in enumerate(zip(rows, cols, strict=True)):
            self.add(int(r), int(c), None if probs is None else probs[i])

    def ready(self) -> Iterator[CellStrip]:
        """Cell rows that no tile still to come reaches, in order (at most one strip per call)."""
        n_rows = len(self._remaining)
        while self._next_tile_row < n_rows and self._remaining[self._next_tile_row] == 0:
            self._next_tile_row += 1
        if self._next_tile_row < n_rows:
            # Later tile rows start further down: none reaches above this one's first cell.
            final = self._rows[self._next_tile_row][0]
        else:
            final = self.cells.shape[0]
        if final <= self._emitted:
            return
        n_cols = self.cells.shape[1]
        probs = np.full((final - self._emitted, n_cols, self.num_classes), np.nan, np.float32)
        for i, r in enumerate(range(self._emitted, final)):
            acc, weight = self._sum.pop(r, None), self._weight.pop(r, None)
            if acc is None or weight is None:
                continue
            covered = weight > 0
            probs[i, covered] = acc[covered] / weight[covered, None]
        strip = CellStrip(self._emitted, probs)
        self._emitted = final
        yield strip

    @property
    def done(self) -> bool:
        """Every cell row has been handed out."""
        return self._emitted >= self.cells.shape[0]

    def pending_rows(self) -> int:
        """Cell rows held in memory now (bounded by about T/S + batch reach)."""
        return len(self._sum)
