"""Per-class areas of a class raster, in square metres, hectares and shares of the valid area.

Areas come from the class raster's pixels (nodata excluded), so they describe
exactly the map that was written. A projected CRS gives every pixel the same
planar area (``|det(transform)|`` times the square of the CRS's linear unit in
metres); a geographic CRS gives each pixel row its geodesic area on the CRS's
ellipsoid (``pyproj.Geod``), which shrinks towards the poles. Without a CRS
there are no metres: areas are ``None`` and shares count pixels.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyproj
import rasterio
import shapely
from rasterio.windows import Window

from mscn_geo.io.styles import class_values

__all__ = [
    "AreaTally",
    "ClassArea",
    "SceneAreas",
    "geometry_areas_m2",
    "metres_per_unit",
    "raster_areas",
    "write_areas_csv",
]

#: Columns of ``<scene>_areas.csv``.
CSV_COLUMNS = ("class_id", "class_name", "pixels", "area_m2", "area_ha", "share")

# Rows read at a time by :func:`raster_areas` when the raster's blocks are smaller.
_READ_ROWS = 512


def _pyproj_crs(crs: Any) -> pyproj.CRS | None:
    if crs is None:
        return None
    return pyproj.CRS.from_user_input(crs.to_wkt() if hasattr(crs, "to_wkt") else crs)


def metres_per_unit(crs: Any) -> float | None:
    """Metres per linear unit of a projected ``crs``; ``None`` for geographic or no CRS."""
    proj = _pyproj_crs(crs)
    if proj is None or proj.is_geographic:
        return None
    unit = proj.axis_info[0].unit_conversion_factor if proj.axis_info else None
    return float(unit) if unit else None


def geometry_areas_m2(geometries: Sequence[Any] | np.ndarray, crs: Any) -> np.ndarray:
    """(n,) float64 area in m2 of each shapely geometry given in ``crs``.

    Planar in a projected CRS (scaled by its unit), geodesic on the ellipsoid of
    a geographic CRS (``pyproj.Geod.geometry_area_perimeter``); NaN without a CRS.
    """
    geometries = np.asarray(geometries, dtype=object)
    proj = _pyproj_crs(crs)
    if proj is None:
        return np.full(len(geometries), np.nan)
    if proj.is_geographic:
        geod = proj.get_geod()
        return np.array([abs(geod.geometry_area_perimeter(g)[0]) for g in geometries], float)
    unit = metres_per_unit(proj)
    if unit is None:
        return np.full(len(geometries), np.nan)
    return shapely.area(geometries).astype(np.float64) * unit**2


def _row_pixel_areas(transform: Any, proj: pyproj.CRS, rows: np.ndarray, col: float) -> np.ndarray:
    """Geodesic area (m2) of the pixel at column ``col`` of each pixel row in ``rows``."""
    geod = proj.get_geod()
    t = transform
    areas = np.empty(len(rows), np.float64)
    for i, row in enumerate(rows):
        corners = [(col, row), (col + 1, row), (col + 1, row + 1), (col, row + 1)]
        xs, ys = zip(*(t @ corner for corner in corners), strict=True)
        areas[i] = abs(geod.polygon_area_perimeter(xs, ys)[0])
    return areas


@dataclass(frozen=True)
class ClassArea:
    """Area of one class: ``area_m2``/``area_ha`` are ``None`` without a CRS."""

    class_id: int
    class_name: str
    pixels: int
    area_m2: float | None
    share: float  # of the valid area, 0..1

    @property
    def area_ha(self) -> float | None:
        return None if self.area_m2 is None else self.area_m2 / 10_000.0


@dataclass(frozen=True)
class SceneAreas:
    """Per-class areas of one map and the valid (classified) area they add up to."""

    classes: list[ClassArea]
    valid_pixels: int
    valid_m2: float | None
    method: str  # "planar", "geodesic" or "pixels" (no CRS)

    def share(self, class_name: str) -> float:
        return next(c.share for c in self.classes if c.class_name == class_name)

    def to_dict(self) -> dict[str, Any]:
        """The ``areas`` entry of the ``--json`` summary."""

        def rounded(value: float | None, digits: int) -> float | None:
            return None if value is None else round(value, digits)

        return {
            "method": self.method,
            "valid_pixels": self.valid_pixels,
            "valid_m2": rounded(self.valid_m2, 2),
            "valid_ha": rounded(None if self.valid_m2 is None else self.valid_m2 / 1e4, 4),
            "classes": {
                c.class_name: {
                    "class_id": c.class_id,
                    "pixels": c.pixels,
                    "m2": rounded(c.area_m2, 2),
                    "ha": rounded(c.area_ha, 4),
                    "share": round(c.share, 6),
                }
                for c in self.classes
            },
        }


class AreaTally:
    """Adds up pixel counts and areas per raster value of a class raster, strip by strip.

    Args:
        transform: the raster's affine transform.
        crs: its CRS (rasterio or pyproj), or ``None``.
        width: raster width in pixels.
    """

    def __init__(self, transform: Any, crs: Any, width: int) -> None:
        self.transform = transform
        self.width = int(width)
        self._proj = _pyproj_crs(crs)
        self._pixels = np.zeros(256, np.int64)
        self._m2 = np.zeros(256, np.float64)
        if self._proj is None:
            self.method = "pixels"
            self._pixel_m2: float | None = None
        elif self._proj.is_geographic:
            self.method = "geodesic"
            self._pixel_m2 = None
        else:
            unit = metres_per_unit(self._proj)
            self.method = "planar" if unit else "pixels"
            self._pixel_m2 = abs(transform.determinant) * unit**2 if unit else None

    def add(self, row0: int, strip: np.ndarray) -> None:
        """Count ``strip`` ((rows, width) uint8 values), the raster rows from ``row0`` on."""
        strip = np.asarray(strip)
        if strip.ndim != 2 or strip.shape[1] != self.width or strip.dtype != np.uint8:
            raise ValueError(f"strip {strip.dtype} {strip.shape} is not uint8 (rows, {self.width})")
        rows = strip.shape[0]
        if self.uniform:
            self.add_counts(np.bincount(strip.ravel(), minlength=256))
            return
        # One bincount for every (row, value) pair: row r's values land in bins r*256 + v.
        offsets = np.arange(rows, dtype=np.int64)[:, None] * 256
        by_row = np.bincount((strip + offsets).ravel(), minlength=rows * 256).reshape(rows, 256)
        self._pixels += by_row.sum(axis=0)
        at = np.arange(row0, row0 + rows, dtype=np.float64)
        # Pixels of a row share its latitude band: one geodesic area per row
        # (taken at the middle column, exact for north-up rasters).
        per_row = _row_pixel_areas(self.transform, self._proj, at, self.width // 2)
        self._m2 += (by_row * per_row[:, None]).sum(axis=0)

    @property
    def uniform(self) -> bool:
        """Every pixel has the same area (not geodesic): counts alone give the areas."""
        return self.method != "geodesic"

    def add_counts(self, counts: np.ndarray) -> None:
        """Add (256,) pixel counts per raster value (only where :attr:`uniform`)."""
        if not self.uniform:
            raise ValueError("geodesic areas need the pixels' rows: use add()")
        self._pixels += counts
        if self._pixel_m2 is not None:
            self._m2 += counts * self._pixel_m2

    @property
    def pixel_counts(self) -> np.ndarray:
        """(256,) pixels counted so far per raster value."""
        return self._pixels

    def result(self, class_names: Sequence[str], values: Sequence[int] | None = None) -> SceneAreas:
        """Areas of the classes ``class_names`` with raster values ``values``
        (default ``0, 1, ...``); every other value (nodata) is left out."""
        values = class_values(class_names, values)
        metric = self.method in ("planar", "geodesic")
        pixels = self._pixels[values]
        m2 = self._m2[values]
        weights = m2 if metric else pixels.astype(np.float64)
        total = float(weights.sum())
        classes = [
            ClassArea(
                class_id=value,
                class_name=str(name),
                pixels=int(pixels[i]),
                area_m2=float(m2[i]) if metric else None,
                share=float(weights[i] / total) if total > 0 else 0.0,
            )
            for i, (value, name) in enumerate(zip(values, class_names, strict=True))
        ]
        return SceneAreas(
            classes=classes,
            valid_pixels=int(pixels.sum()),
            valid_m2=float(m2.sum()) if metric else None,
            method=self.method,
        )


def raster_areas(
    path: Path, class_names: Sequence[str], values: Sequence[int] | None = None
) -> SceneAreas:
    """Per-class areas of the class raster at ``path`` (band 1, uint8), read in strips.

    Class ``class_names[i]`` has raster value ``values[i]`` (default ``i``); other
    values, such as nodata 255, are not counted. Memory holds one strip whatever
    the raster size.
    """
    with rasterio.open(path) as ds:
        tally = AreaTally(ds.transform, ds.crs, ds.width)
        step = max(_READ_ROWS, ds.block_shapes[0][0])
        for row0 in range(0, ds.height, step):
            rows = min(step, ds.height - row0)
            tally.add(row0, ds.read(1, window=Window(0, row0, ds.width, rows)))
    return tally.result(class_names, values)


def write_areas_csv(path: Path, areas: SceneAreas) -> None:
    """Write ``areas`` as CSV (:data:`CSV_COLUMNS`; empty cells for areas without a CRS)."""

    def cell(value: float | None, digits: int) -> str:
        return "" if value is None or math.isnan(value) else f"{value:.{digits}f}"

    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_COLUMNS)
        for c in areas.classes:
            writer.writerow(
                [
                    c.class_id,
                    c.class_name,
                    c.pixels,
                    cell(c.area_m2, 2),
                    cell(c.area_ha, 4),
                    f"{c.share:.6f}",
                ]
            )
