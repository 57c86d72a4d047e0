"""The tile grid laid over a scene, and which tile owns which pixel.

Rules (documented in the README, "Tiling, edges and nodata"):

* Tiles of ``tile`` x ``tile`` pixels start at 0, S, 2S, ... (S = stride, at most
  the tile size so that no pixel is left out).
* The last row/column of tiles is shifted inward so that it ends exactly on the
  scene edge: every classified pixel is a real pixel, and the shifted tile overlaps
  its neighbour.
* Where the scene is smaller than one tile in a dimension there is a single tile in
  that dimension, starting at 0 and padded past the edge (``padded=True``).
* A tile's *window* is the in-scene pixels it classifies (its footprint).
* Pixel ownership (for the class raster): tile (r, c) owns its unshifted grid cell,
  rows ``[r*S, (r+1)*S)`` and columns ``[c*S, (c+1)*S)``, the last row/column of
  cells extended to the scene edge. The cells partition the scene and each cell lies
  inside its tile's window, so painting the cells is the same as painting the tiles
  in grid order where a later tile only paints its own cell.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from rasterio.windows import Window

from mscn_geo.errors import OptionError

MIN_TILE = 32  # the networks downsample by 32


@dataclass(frozen=True)
class Tile:
    """One tile of the grid.

    Attributes:
        row, col: position in the grid (0-based).
        window: the in-scene pixels classified (col_off, row_off, width, height).
        padded: the window is smaller than the tile in at least one dimension
            (scene smaller than a tile) and the rest of the tile is padding.
    """

    row: int
    col: int
    window: Window
    padded: bool


def _offsets(length: int, tile: int, stride: int) -> list[int]:
    """Start offsets along one axis: 0, S, 2S, ..., the last one ending on the edge."""
    if length <= tile:
        return [0]
    n = -(-(length - tile) // stride) + 1  # ceil((length - tile) / stride) + 1
    return [min(i * stride, length - tile) for i in range(n)]


def check_tiling(tile: int, stride: int) -> None:
    """Raise :class:`OptionError` for a tile size or stride that cannot cover a scene."""
    if tile < MIN_TILE:
        raise OptionError(f"tile size must be at least {MIN_TILE} px, got {tile}")
    if stride < 1:
        raise OptionError(f"stride must be at least 1 px, got {stride}")
    if stride > tile:
        raise OptionError(
            f"stride {stride} is larger than the tile size {tile}: pixels between tiles "
            "would not be classified"
        )


@dataclass(frozen=True)
class TileGrid:
    """The tiles over a ``width`` x ``height`` scene and the pixel-ownership rule."""

    width: int
    height: int
    tile: int
    stride: int

    def __post_init__(self) -> None:
        check_tiling(self.tile, self.stride)
        if self.width < 1 or self.height < 1:
            raise OptionError(f"scene size {self.width}x{self.height} is empty")

    @property
    def col_offsets(self) -> list[int]:
        return _offsets(self.width, self.tile, self.stride)

    @property
    def row_offsets(self) -> list[int]:
        return _offsets(self.height, self.tile, self.stride)

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, cols) of tiles."""
        return len(self.row_offsets), len(self.col_offsets)

    def __len__(self) -> int:
        rows, cols = self.shape
        return rows * cols

    @property
    def padded(self) -> bool:
        """The scene is smaller than one tile in a dimension: every tile is padded."""
        return self.width < self.tile or self.height < self.tile

    def tiles(self) -> list[Tile]:
        """Every tile, in grid order (row by row)."""
        return list(self.iter_tiles())

    def iter_tiles(self, start: int = 0, stop: int | None = None) -> Iterator[Tile]:
        """Tiles ``start..stop-1`` in grid order (flat index ``row * cols + col``).

        Computed one by one from the offsets' arithmetic, without building the
        list of every tile: a block of a huge scene costs only its own tiles.
        """
        rows, cols = self.shape
        stop = rows * cols if stop is None else min(stop, rows * cols)
        w = min(self.tile, self.width)
        h = min(self.tile, self.height)
        padded = self.padded
        xs = self.col_offsets
        for index in range(max(start, 0), stop):
            r, c = divmod(index, cols)
            y = min(r * self.stride, self.height - h)
            yield Tile(r, c, Window(xs[c], y, w, h), padded)

    def row_tiles(self, row0: int, row1: int) -> Iterator[Tile]:
        """The tiles of grid rows ``row0..row1-1`` in grid order (see :meth:`iter_tiles`)."""
        cols = self.shape[1]
        return self.iter_tiles(row0 * cols, row1 * cols)

    def index(self, tile: Tile) -> int:
        """``tile``'s flat position in grid order (``row * cols + col``)."""
        return tile.row * self.shape[1] + tile.col

    def col_owner(self) -> np.ndarray:
        """(width,) int: the tile column that owns each pixel column."""
        return _owner(self.width, self.stride, len(self.col_offsets))

    def row_owner(self) -> np.ndarray:
        """(height,) int: the tile row that owns each pixel row."""
        return _owner(self.height, self.stride, len(self.row_offsets))

    def paint(self, classes: np.ndarray, row0: int, row1: int) -> np.ndarray:
        """Class raster rows ``[row0, row1)`` from per-tile classes.

        Args:
            classes: (rows, cols) uint8 class per tile (255 for skipped tiles).

        Returns:
            (row1 - row0, width) uint8: each pixel gets the class of its owner tile.
        """
        return classes[np.ix_(self.row_owner()[row0:row1], self.col_owner())]


def _owner(length: int, stride: int, n: int) -> np.ndarray:
    return np.minimum(np.arange(length) // stride, n - 1)


def tile_grid(width: int, height: int, tile: int, stride: int | None = None) -> list[Tile]:
    """Tiles covering a ``width`` x ``height`` scene, in grid order (see module doc)."""
    return TileGrid(width, height, tile, tile if stride is None else stride).tiles()
