"""Area of interest (``--aoi``): classify and count only what lies inside a polygon.

The AOI is any vector file OGR reads (GeoPackage, GeoJSON, Shapefile...) with
polygons in any CRS; it is reprojected to the scene's CRS and dissolved into
one geometry. Tiles that do not intersect it are not classified; pixels whose
centre lies outside it are nodata in the class raster (and so in the areas),
cells that do not touch it are nodata, and land-use polygons are cut to it.
"""

from __future__ import annotations

import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import affine
import numpy as np
import rasterio.features
import shapely

from mscn_geo.errors import AoiError

__all__ = ["Aoi", "read_aoi"]

# GEOS prepared geometries are not thread-safe (libgeos/geos#825): the reader
# threads testing tiles against one shared AOI crashed the process now and then
# (8 threads on a 2,000-vertex AOI: every run). Preparing and testing hold this lock.
_GEOS_LOCK = threading.Lock()


@dataclass(frozen=True)
class Aoi:
    """An area of interest in the scene's CRS.

    Attributes:
        path: the file it was read from.
        geometry: the dissolved polygons, in the scene's CRS, cut to the scene.
        source_crs: the file's CRS, as text.
    """

    path: Path
    geometry: shapely.Geometry
    source_crs: str

    def digest(self) -> str:
        """SHA-256 of the geometry (WKB): tells two areas of interest apart."""
        import hashlib

        return hashlib.sha256(shapely.to_wkb(self.geometry)).hexdigest()

    def intersects_window(self, transform: affine.Affine, window: Any) -> bool:
        """Whether the pixel window (a rasterio ``Window``) of the scene touches the AOI."""
        return bool(self.intersects_windows(transform, [window])[0])

    def intersects_windows(self, transform: affine.Affine, windows: list[Any]) -> np.ndarray:
        """(n,) bool: which pixel windows (rasterio ``Window``s) of the scene touch the AOI."""
        if not windows:
            return np.zeros(0, bool)
        boxes = []
        for w in windows:
            corners = [
                (w.col_off, w.row_off),
                (w.col_off + w.width, w.row_off),
                (w.col_off + w.width, w.row_off + w.height),
                (w.col_off, w.row_off + w.height),
            ]
            boxes.append(shapely.Polygon([transform @ c for c in corners]))
        # Touching along an edge only is not overlapping: such a tile has nothing inside.
        boxes = np.array(boxes, dtype=object)
        with _GEOS_LOCK:
            shapely.prepare(self.geometry)
            return shapely.intersects(self.geometry, boxes) & ~shapely.touches(self.geometry, boxes)

    def mask(
        self, transform: affine.Affine, shape: tuple[int, int], all_touched: bool = False
    ) -> np.ndarray:
        """(rows, cols) bool, True inside the AOI, for a grid with ``transform``.

        ``all_touched=False``: cells whose centre is inside (pixels of the class
        raster); ``True``: every cell the AOI touches (map cells, cut later).
        """
        return rasterio.features.geometry_mask(
            [self.geometry], out_shape=shape, transform=transform, all_touched=all_touched,
            invert=True,
        )  # fmt: skip


def read_aoi(path: str | Path, scene_crs: Any, footprint: shapely.Geometry) -> Aoi:
    """Read the AOI file ``path`` and bring it to ``scene_crs``.

    Args:
        scene_crs: the scene's CRS (rasterio or pyproj); ``None`` is refused.
        footprint: the scene's footprint in its CRS (the AOI is cut to it).

    Raises:
        AoiError: the file cannot be read, holds no polygon, has no CRS, cannot
            be reprojected, or does not overlap the scene.
    """
    import geopandas
    import pyogrio.errors

    path = Path(path)
    if scene_crs is None:
        raise AoiError(
            f"aoi {path}: the scene has no CRS to place the area of interest in", field="aoi"
        )
    if not path.exists():
        raise AoiError(f"aoi {path}: no such file", field="aoi")
    try:
        with warnings.catch_warnings():
            # A file with several layers: the first is used (as OGR tools do).
            warnings.simplefilter("ignore", UserWarning)
            frame = geopandas.read_file(path)
    except (pyogrio.errors.DataSourceError, pyogrio.errors.DataLayerError, OSError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise AoiError(
            f"aoi {path}: cannot be read as a vector file ({reason})", field="aoi"
        ) from exc
    polygons = frame.geometry[frame.geometry.geom_type.isin(["Polygon", "MultiPolygon"])]
    if polygons.empty:
        kinds = sorted(set(frame.geometry.geom_type.dropna())) or ["no geometry"]
        raise AoiError(f"aoi {path}: holds no polygon ({', '.join(kinds)})", field="aoi")
    if frame.crs is None:
        raise AoiError(
            f"aoi {path}: has no CRS (a GeoJSON is WGS 84; add a .prj or CRS)", field="aoi"
        )
    try:
        projected = polygons.to_crs(
            scene_crs.to_wkt() if hasattr(scene_crs, "to_wkt") else scene_crs
        )
    except Exception as exc:  # pyproj raises several types for impossible transforms
        raise AoiError(
            f"aoi {path}: cannot be reprojected to the scene's CRS ({exc})", field="aoi"
        ) from exc
    geometry = shapely.make_valid(shapely.union_all(projected.values))
    if not np.isfinite(shapely.bounds(geometry)).all():
        raise AoiError(
            f"aoi {path}: does not overlap the scene (outside the scene's CRS area)", field="aoi"
        )
    inside = shapely.intersection(geometry, footprint)
    if inside.is_empty or inside.area <= 0:
        raise AoiError(
            f"aoi {path}: does not overlap the scene (AOI bounds "
            f"{_bounds(geometry)}, scene bounds {_bounds(footprint)} in the scene's CRS)",
            field="aoi",
        )
    return Aoi(path=path, geometry=inside, source_crs=str(frame.crs.to_string()))


def _bounds(geometry: shapely.Geometry) -> str:
    return "(" + ", ".join(f"{v:.6g}" for v in shapely.bounds(geometry)) + ")"
