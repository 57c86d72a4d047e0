"""Land-use polygons: every connected region of one class on the cell grid, dissolved.

The map's cells (one class and one confidence per S x S scene pixels) are
polygonised with GDAL (``rasterio.features.shapes``, 4-connectivity): cells of
one class that share an edge become one polygon, with holes where other classes
lie inside it; cells touching only at a corner are separate regions. Polygons
are clipped to the scene footprint (the last row/column of cells may reach past
the scene edge) and to the area of interest, and get their class, area and the
mean confidence of their cells. Only the cell grid is held in memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import affine
import geopandas
import numpy as np
import rasterio.features
import shapely
from shapely.geometry import shape

from mscn_geo.areas import geometry_areas_m2
from mscn_geo.io.styles import class_values
from mscn_geo.io.vector import LANDUSE_COLUMNS

__all__ = ["NODATA_CELL", "landuse_frame", "scene_footprint"]

#: Cell value of unclassified cells (nodata, outside the area of interest).
NODATA_CELL = 255


def scene_footprint(transform: affine.Affine, width: int, height: int) -> shapely.Polygon:
    """The scene's ``width`` x ``height`` pixels as a polygon in CRS coordinates.

    All four corners go through ``transform``, so rotated grids are exact.
    """
    corners = [(0, 0), (width, 0), (width, height), (0, height)]
    return shapely.Polygon([transform @ corner for corner in corners]).normalize()


def landuse_frame(
    classes: np.ndarray,
    confidence: np.ndarray,
    cell_transform: affine.Affine,
    crs: Any,
    class_names: Sequence[str],
    clip: shapely.Geometry | None = None,
    values: Sequence[int] | None = None,
) -> geopandas.GeoDataFrame:
    """One polygon per connected region of one class on the cell grid.

    Args:
        classes: (rows, cols) uint8 value per cell: a class's value, or any other
            (:data:`NODATA_CELL`) for cells without a class.
        confidence: (rows, cols) float confidence (top-1 probability) per cell.
        cell_transform: affine transform of the cell grid (the scene transform
            times ``Affine.scale(S)`` for S x S pixel cells).
        crs: CRS of the transform (rasterio or pyproj), or ``None``.
        class_names: names of the classes.
        clip: polygon in CRS coordinates the regions are cut to (the scene
            footprint, intersected with the area of interest); ``None``: none.
        values: the cell value of each class (default ``0, 1, ...``; e.g. 254
            for ``uncertain``); ``class_id`` is this value.

    Returns:
        GeoDataFrame with :data:`~mscn_geo.io.vector.LANDUSE_COLUMNS` (``class_id``,
        ``class_name``, ``area_m2``, ``confidence``: the mean of the region's
        cells) and Polygon geometries, ordered by class id then area (largest first).
    """
    classes = np.asarray(classes)
    confidence = np.asarray(confidence, dtype=np.float64)
    if classes.ndim != 2 or confidence.shape != classes.shape:
        raise ValueError(f"classes {classes.shape} and confidence {confidence.shape} differ")
    values = class_values(class_names, values)
    name_of = dict(zip(values, map(str, class_names), strict=True))
    valid = np.isin(classes, values)
    grid = classes.astype(np.int32)
    # Polygonise in cell coordinates (exact integer vertices), then map to the CRS.
    regions = [
        (shape(geometry), int(value))
        for geometry, value in rasterio.features.shapes(
            grid, mask=valid, connectivity=4, transform=affine.Affine.identity()
        )
    ]
    geometries = np.array([g for g, _ in regions], dtype=object)
    ids = np.array([v for _, v in regions], dtype=np.int32)
    mean_confidence = _region_means(geometries, confidence, classes.shape)
    t = cell_transform
    matrix = [t.a, t.b, t.d, t.e, t.c, t.f]
    geometries = np.array(
        [shapely.affinity.affine_transform(g, matrix) for g in geometries], dtype=object
    )
    if clip is not None and len(geometries):
        inside = shapely.contains_properly(clip, geometries)
        cut = ~inside
        geometries[cut] = shapely.intersection(geometries[cut], clip)
        geometries, keep = _polygons_only(geometries)
        ids, mean_confidence = ids[keep], mean_confidence[keep]
    areas = geometry_areas_m2(geometries, crs)
    frame = geopandas.GeoDataFrame(
        {
            "class_id": ids,
            "class_name": [name_of[int(i)] for i in ids],
            "area_m2": areas,
            "confidence": mean_confidence,
        },
        geometry=list(geometries),
        crs=crs,
    )
    frame = frame[[*LANDUSE_COLUMNS, "geometry"]]
    order = np.lexsort((-np.nan_to_num(areas, nan=0.0), ids))
    return frame.iloc[order].reset_index(drop=True)


def _region_means(
    geometries: np.ndarray, values: np.ndarray, shape_: tuple[int, int]
) -> np.ndarray:
    """Mean of ``values`` over the cells of each region (polygons in cell coordinates)."""
    if not len(geometries):
        return np.zeros(0, np.float64)
    labels = rasterio.features.rasterize(
        ((g, i + 1) for i, g in enumerate(geometries)),
        out_shape=shape_,
        fill=0,
        transform=affine.Affine.identity(),
        dtype=np.int32,
    )
    n = len(geometries) + 1
    finite = np.isfinite(values)
    sums = np.bincount(labels[finite], weights=values[finite], minlength=n)
    counts = np.bincount(labels[finite], minlength=n)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (sums / counts)[1:]


def _polygons_only(geometries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Polygons of clipped regions, with the index of the region each came from.

    The footprint only trims the outer row/column of cells, which keeps a region
    one polygon; an area of interest boundary crossing a region's cells can cut
    it in parts, kept as separate polygons (same class and confidence). Empty
    results and slivers of lower dimension are dropped.
    """
    out: list[Any] = []
    keep: list[int] = []
    for i, geometry in enumerate(geometries):
        parts = [p for p in shapely.get_parts(geometry) if p.geom_type == "Polygon" and p.area > 0]
        out.extend(parts)
        keep.extend([i] * len(parts))
    return np.array(out, dtype=object).reshape(-1), np.array(keep, dtype=np.int64)
