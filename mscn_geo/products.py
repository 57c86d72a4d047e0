"""The map products of one classified scene, made once its class raster is written.

* the ``landuse`` layer of ``<scene>.gpkg``: connected regions of one class on
  the cell grid (:mod:`mscn_geo.landuse`), cut to the scene and the area of interest;
* ``<scene>_areas.csv`` and the ``areas`` of the summary: per-class areas of the
  class raster's pixels (:mod:`mscn_geo.areas`);
* ``<scene>_quicklook.png``: the scene with the map over it (:mod:`mscn_geo.quicklook`).

Only the cell grid (one uint8 class and one confidence per S x S pixels) is
held for the whole scene; the class raster is read back in strips and through
its overviews.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import affine
import numpy as np

from mscn_geo.areas import AreaTally, SceneAreas, write_areas_csv
from mscn_geo.io.vector import write_landuse_layer
from mscn_geo.landuse import NODATA_CELL, landuse_frame, scene_footprint
from mscn_geo.quicklook import render_quicklook
from mscn_geo.reader import SceneInfo

__all__ = ["CellMap", "MapProducts", "write_map_products"]


@dataclass
class CellMap:
    """The map at cell resolution: S x S scene pixels per cell, last row/column cut
    (:meth:`mscn_geo.map_writer.MapWriter.cell_map`).

    Attributes:
        classes: (rows, cols) uint8 class value per cell, :data:`NODATA_CELL` for none.
        confidence: (rows, cols) float32 top-1 probability, NaN where no class.
        size: S, the cell edge in scene pixels.
    """

    classes: np.ndarray
    confidence: np.ndarray
    size: int

    def transform(self, scene_transform: affine.Affine) -> affine.Affine:
        return scene_transform @ affine.Affine.scale(self.size)


@dataclass
class MapProducts:
    """What :func:`write_map_products` made: the areas and the land-use polygon count."""

    areas: SceneAreas
    landuse_polygons: int
    warnings: list[str]


def write_map_products(
    paths: dict[str, Path],
    info: SceneInfo,
    cells: CellMap,
    class_names: Sequence[str],
    colours: Sequence[tuple[int, int, int]],
    tally: AreaTally,
    values: Sequence[int] | None = None,
) -> MapProducts:
    """Write the land-use layer, the areas CSV and (when in ``paths``) the quicklook.

    Args:
        paths: ``raster`` (the finished class raster, read by the quicklook),
            ``gpkg`` (the layer is added), ``areas`` and optionally ``quicklook``
            (written).
        info: the scene; ``info.aoi`` cuts the cells and polygons.
        cells: the map's cells (cells outside the AOI are set to nodata here).
        tally: the class raster's pixels, tallied as it was written
            (:attr:`~mscn_geo.map_writer.MapWriter.areas`).
        values: raster value of each class (default ``0, 1, ...``).
    """
    areas = tally.result(class_names, values)
    write_areas_csv(paths["areas"], areas)

    clip = scene_footprint(info.transform, info.width, info.height)
    classes, confidence = cells.classes, cells.confidence
    cell_transform = cells.transform(info.transform)
    if info.aoi is not None:
        # Cells the AOI does not touch are nodata; the others are cut to it.
        touched = info.aoi.mask(cell_transform, classes.shape, all_touched=True)
        classes = np.where(touched, classes, NODATA_CELL).astype(np.uint8)
        clip = clip.intersection(info.aoi.geometry)
    frame = landuse_frame(
        classes, confidence, cell_transform, info.crs, class_names, clip=clip, values=values
    )
    write_landuse_layer(paths["gpkg"], frame, class_names, colours)

    warnings: list[str] = []
    if "quicklook" in paths:
        shares = [c.share for c in areas.classes] if areas.valid_pixels else None
        quicklook = render_quicklook(
            info, paths["raster"], class_names, colours, shares, values=values
        )
        quicklook.save(paths["quicklook"])
        warnings.extend(quicklook.warnings)
    return MapProducts(areas, len(frame), warnings)
