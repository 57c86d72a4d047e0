"""A scene's map rasters, written strip by strip while its tiles are classified.

:class:`MapWriter` takes per-tile probabilities as the inference loop produces
them (grid order, batch by batch), aggregates them into S x S cells
(:mod:`mscn_geo.aggregate`), and as soon as a strip of cells is complete:

* labels its cells (argmax; ``uncertain`` below ``min_confidence``;
  :mod:`mscn_geo.uncertainty`),
* paints them on the scene's pixel grid, sets every pixel that is nodata in
  the scene to nodata (255) whatever its cell's class, and writes the strip to
  the class raster,
* with ``probabilities``, writes the cells' probabilities (nodata where no
  pixel of the cell is valid) to ``<scene>_probs.tif``,
* counts pixels per raster value and keeps the cells' classes and
  confidences (for the land-use layer, :mod:`mscn_geo.products`).

With an area of interest, pixels outside it are nodata too (cells: those it
does not touch).

Pixel validity comes from the tiles' validity masks as the loop reads them
(no second read of the scene) or, where those are not available (results from a
resume journal or a Dask cluster, ``--resample``), from the scene's masks read
per strip, and only when the scene has nodata at all.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from rasterio.enums import MaskFlags
from rasterio.windows import Window

from mscn_geo.aggregate import DEFAULT_WEIGHTING, CellGrid, OverlapAggregator
from mscn_geo.areas import AreaTally
from mscn_geo.reader import SceneInfo, cap_block_cache, validity
from mscn_geo.tiling import Tile, TileGrid
from mscn_geo.uncertainty import (
    NODATA_CLASS,
    UNCERTAIN_CLASS,
    UNCERTAIN_COLOUR,
    UNCERTAIN_NAME,
    confidence,
    label,
)

__all__ = ["MapWriter", "SceneValidity", "TileValidity", "map_legend"]


def map_legend(
    class_names: Sequence[str], min_confidence: float | None = None
) -> list[tuple[int, str, tuple[int, int, int]]]:
    """(raster value, name, colour) of every value the class raster may hold except nodata."""
    from mscn_geo.io.styles import class_colours

    entries = [
        (i, name, colour)
        for i, (name, colour) in enumerate(
            zip(class_names, class_colours(class_names), strict=True)
        )
    ]
    if min_confidence is not None:
        entries.append((UNCERTAIN_CLASS, UNCERTAIN_NAME, UNCERTAIN_COLOUR))
    return entries


class SceneValidity:
    """Pixel validity of scene rows, read from the scene per strip (same rule as tiles)."""

    def __init__(self, info: SceneInfo) -> None:
        self.info = info
        self._ds: Any = None
        with rasterio.open(info.path) as ds:
            flags = [ds.mask_flag_enums[b - 1] for b in info.band_indexes]
        self.all_valid = not info.float_data and all(f == [MaskFlags.all_valid] for f in flags)

    def rows(self, y0: int, y1: int) -> np.ndarray | None:
        """(y1 - y0, width) bool validity, or ``None`` when every pixel is valid."""
        if self.all_valid:
            return None
        if self._ds is None:
            self._ds = rasterio.open(self.info.path)
        window = Window(0, y0, self.info.width, y1 - y0)
        bands = self.info.band_indexes
        data = self._ds.read(bands, window=window)
        masks = None if self.info.nodata_from_value else self._ds.read_masks(bands, window=window)
        return validity(self.info, data, masks)

    def close(self) -> None:
        if self._ds is not None:
            self._ds.close()
            self._ds = None


class TileValidity:
    """Pixel validity gathered from the tiles' masks as the loop reads them.

    Keeps the scene rows from the first row not yet handed out down to the
    lowest tile seen (a few tile heights x width bools). Overlapping tiles
    carry the same validity for the pixels they share.
    """

    def __init__(self, width: int) -> None:
        self.width = width
        self._base = 0
        self._valid = np.zeros((0, width), dtype=bool)
        self.all_valid = False

    def add(self, tile: Tile, valid: np.ndarray | None) -> None:
        """``valid``: the tile's (T, T) mask (padding included), ``None`` for an all-nodata tile."""
        w = tile.window
        x0, y0, width, height = (int(v) for v in (w.col_off, w.row_off, w.width, w.height))
        end = y0 + height - self._base
        if end > self._valid.shape[0]:
            grow = np.zeros((end - self._valid.shape[0], self.width), dtype=bool)
            self._valid = np.concatenate([self._valid, grow])
        # A shifted last tile row overlaps rows already handed out (the tiles
        # above gave them): only its rows below those count.
        skip = max(0, self._base - y0)
        if skip >= height:
            return
        part = False if valid is None else valid[skip:height, :width]
        self._valid[y0 + skip - self._base : end, x0 : x0 + width] = part

    def rows(self, y0: int, y1: int) -> np.ndarray:
        """Validity of rows ``[y0, y1)`` (all their tiles seen); forgets the rows above ``y1``."""
        out = self._valid[y0 - self._base : y1 - self._base].copy()
        if out.shape[0] != y1 - y0:
            raise ValueError(f"rows {y0}..{y1} are not covered by the tiles seen")
        self._valid = self._valid[y1 - self._base :]
        self._base = y1
        return out

    def close(self) -> None:
        self._valid = np.zeros((0, self.width), dtype=bool)


@dataclass
class MapWriter:
    """Streams one scene's tiles into its class raster (and probabilities raster).

    Args:
        info, grid: the scene and its tile grid (``grid.stride`` is the cell size).
        class_names: the model's classes.
        raster: path of the class raster (a temporary of :func:`~mscn_geo.io.atomic_outputs`).
        probabilities: path of the probabilities raster, ``None`` for none.
        weighting: the tiles' window function (:data:`~mscn_geo.aggregate.WEIGHTINGS`).
        min_confidence: cells below it become ``uncertain`` (254); ``None``: off.
        tile_masks: pixel validity from the masks given to :meth:`add` (else read
            from the scene per strip).
        aoi: an :class:`~mscn_geo.aoi.Aoi`: pixels outside it are nodata.

    Use as a context manager; :meth:`add` per batch, in grid order. On a clean
    exit every tile must have been added; ``areas`` then holds the pixel
    counts and areas per raster value, tallied from the strips as they were
    written (the class raster is not read back).
    """

    info: SceneInfo
    grid: TileGrid
    class_names: Sequence[str]
    raster: Path
    probabilities: Path | None = None
    weighting: str = DEFAULT_WEIGHTING
    min_confidence: float | None = None
    tile_masks: bool = False
    aoi: Any = None

    def __post_init__(self) -> None:
        self.aggregator = OverlapAggregator(self.grid, len(self.class_names), self.weighting)
        self.cells: CellGrid = self.aggregator.cells
        self.areas = AreaTally(self.info.transform, self.info.crs, self.info.width)
        # The cell grid's classes and confidences (a byte and a float per cell) for
        # the land-use layer: small whatever the scene size.
        self._cell_labels: list[np.ndarray] = []
        self._cell_confidence: list[np.ndarray] = []
        self._validity: SceneValidity | TileValidity = (
            TileValidity(self.info.width) if self.tile_masks else SceneValidity(self.info)
        )
        self._open()

    def _open(self) -> None:
        from mscn_geo.io.raster import ClassRasterWriter, ProbabilityRasterWriter

        info = self.info
        legend = map_legend(self.class_names, self.min_confidence)
        k = len(self.class_names)
        # GDAL would otherwise keep dirty blocks up to 5% of RAM (the whole raster).
        cap_block_cache(info.width, 1, 1, 2 * self.grid.tile)
        self._class_writer = ClassRasterWriter(
            self.raster,
            width=info.width,
            height=info.height,
            crs=info.crs,
            transform=info.transform,
            class_names=[name for _, name, _ in legend[:k]],
            colours=[colour for _, _, colour in legend[:k]],
            nodata=NODATA_CLASS,
            extra_classes={v: (n, c) for v, n, c in legend[k:]},
        )
        self._probs_writer = None
        if self.probabilities is not None:
            rows, cols = self.cells.shape
            self._probs_writer = ProbabilityRasterWriter(
                self.probabilities,
                width=cols,
                height=rows,
                crs=info.crs,
                transform=self.cells.transform(info.transform),
                class_names=self.class_names,
            )

    def add(
        self,
        tiles: Sequence[Tile],
        probs: np.ndarray | None,
        valid: Sequence[np.ndarray | None] | None = None,
    ) -> None:
        """Record a batch: ``probs`` (n, classes) (NaN rows or ``None``: skipped tiles);
        with ``tile_masks``, ``valid`` the tiles' (T, T) masks (``None``: all nodata)."""
        for i, tile in enumerate(tiles):
            if isinstance(self._validity, TileValidity):
                if valid is None:
                    raise ValueError("tile_masks needs the tiles' validity masks")
                self._validity.add(tile, valid[i])
            self.aggregator.add(tile.row, tile.col, None if probs is None else probs[i])
        self.flush()

    def add_skipped(self, tile: Tile) -> None:
        """Record a tile skipped as all-nodata."""
        self.add([tile], None, [None])

    def add_record(self, record: Any) -> None:
        """Record one :class:`~mscn_geo.predict.BatchRecord` (the loop's ``on_batch``)."""
        skipped = [next(self.grid.iter_tiles(int(i), int(i) + 1)) for i in record.skipped]
        tiles = [*record.tiles, *skipped]
        probs = np.full((len(tiles), len(self.class_names)), np.nan, np.float32)
        probs[: len(record.tiles)] = record.probs
        self.add(tiles, probs, [*record.valid, *([None] * len(skipped))])

    def add_result(self, result: Any) -> None:
        """Record a whole :class:`~mscn_geo.predict.TileResult` (resumed or merged runs)."""
        cols = self.grid.shape[1]
        for lo in range(0, len(result.tiles), cols):  # one tile row at a time
            self.add(result.tiles[lo : lo + cols], result.probs[lo : lo + cols])

    def flush(self) -> None:
        """Write every strip the tiles so far have finished."""
        for strip in self.aggregator.ready():
            self._write(strip.row0, strip.probs)

    def _write(self, row0: int, probs: np.ndarray) -> None:
        y0, y1 = self.cells.pixel_rows(row0, row0 + probs.shape[0])
        valid = self._validity.rows(y0, y1)
        if self.aoi is not None:
            inside = self.aoi.mask(
                self.info.transform @ Affine.translation(0, y0), (y1 - y0, self.info.width)
            )
            valid = inside if valid is None else valid & inside
        if valid is not None and valid.all():  # most strips: skip the masking below
            valid = None
        per_cell = self.cells.pixels_per_cell(row0, probs.shape[0], valid)  # valid pixels
        if valid is not None:
            probs[per_cell == 0] = np.nan
        labels = label(probs, self.min_confidence)
        pixels = self.cells.paint(labels, row0)
        if valid is not None:
            pixels[~valid] = NODATA_CLASS
        self._class_writer.write(Window(0, y0, self.info.width, y1 - y0), pixels)
        if self.areas.uniform:
            # Counted per cell (its label, its valid pixels) instead of per pixel: the
            # same counts as the strip's, at 1/S^2 of the work.
            counts = np.bincount(labels.ravel(), per_cell.ravel(), minlength=256)
            counts = counts.astype(np.int64)
            counts[NODATA_CLASS] += pixels.size - int(per_cell.sum())
            self.areas.add_counts(counts)
        else:
            self.areas.add(y0, pixels)
        if self._probs_writer is not None:
            self._probs_writer.write(Window(0, row0, probs.shape[1], probs.shape[0]), probs)
        self._cell_labels.append(labels)
        self._cell_confidence.append(confidence(probs))

    def close(self) -> None:
        """Finish both rasters (every tile must have been added)."""
        try:
            if not self.aggregator.done:
                raise ValueError("internal error: the map is closed before every tile was added")
            self._class_writer.close()
            if self._probs_writer is not None:
                self._probs_writer.close()
        except BaseException:
            self.abort()
            raise
        finally:
            self._release()

    def abort(self) -> None:
        self._class_writer.abort()
        if self._probs_writer is not None:
            self._probs_writer.abort()
        self._release()

    def _release(self) -> None:
        self._validity.close()

    def __enter__(self) -> MapWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def cell_map(self) -> Any:
        """The written map at cell resolution, a :class:`~mscn_geo.products.CellMap`
        (raster values per cell: classes, 254 uncertain, 255 nodata)."""
        from mscn_geo.products import CellMap

        return CellMap(
            np.concatenate(self._cell_labels).astype(np.uint8),
            np.concatenate(self._cell_confidence).astype(np.float32),
            self.cells.size,
        )

    def counts_by_name(self) -> dict[str, int]:
        """Pixels per class name (``uncertain`` included when on), nodata excluded."""
        legend = map_legend(self.class_names, self.min_confidence)
        counts = self.areas.pixel_counts
        return {name: int(counts[value]) for value, name, _ in legend}
