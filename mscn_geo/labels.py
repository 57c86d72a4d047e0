"""Label polygons drawn by a user: reading, checking, and class cover of a window.

A label layer is any polygon layer OGR reads (GeoPackage, GeoJSON, Shapefile,
...) in any CRS, with one text or number field naming each polygon's class.
Polygons are reprojected to each scene's CRS and rasterized per window at the
pixels the window is read at, so the cover of a class is counted on exactly
the pixels a chip holds.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from affine import Affine
from rasterio.crs import CRS
from rasterio.windows import Window
from rasterio.windows import transform as window_transform

from mscn_geo.errors import InputError, OptionError

__all__ = ["LabelLayer", "SceneLabels", "class_folder_name", "read_labels"]

_POLYGONAL = {"Polygon", "MultiPolygon"}


@dataclass
class LabelLayer:
    """Label polygons and their class names, as read (in the layer's CRS).

    Attributes:
        frame: GeoDataFrame with a ``class`` column (str) and valid polygonal
            geometries; features without class or geometry are dropped.
        classes: the class names found, sorted.
        warnings: what was dropped or repaired, for the user.
    """

    path: Path
    layer: str
    frame: Any  # geopandas.GeoDataFrame
    classes: list[str]
    warnings: list[str] = field(default_factory=list)

    @property
    def crs(self) -> Any:
        """The layer's CRS (a ``pyproj.CRS``)."""
        return self.frame.crs

    def for_scene(self, crs: CRS, bounds: tuple[float, float, float, float]) -> SceneLabels:
        """The polygons overlapping a scene with ``bounds`` (in its ``crs``), reprojected to it."""
        import pyproj

        same = pyproj.CRS.from_user_input(crs) == self.crs
        frame = self.frame if same else self.frame.to_crs(crs)
        hits = frame.sindex.query(_box(bounds), predicate="intersects")
        return SceneLabels(frame.iloc[np.sort(hits)].reset_index(drop=True), self.classes)


def _box(bounds: tuple[float, float, float, float]) -> Any:
    import shapely

    return shapely.box(*bounds)


class SceneLabels:
    """Label polygons of one scene, in the scene's CRS, indexed for per-window queries."""

    def __init__(self, frame: Any, classes: list[str]) -> None:
        import shapely

        self.frame = frame  # geopandas.GeoDataFrame with "class"
        self.classes = classes
        self._geoms = np.asarray(frame.geometry.values, dtype=object)
        self._names = np.asarray(frame["class"], dtype=object)
        shapely.prepare(self._geoms)
        self._tree = shapely.STRtree(self._geoms)

    def __len__(self) -> int:
        return len(self._geoms)

    def touching(self, footprints: Sequence[Any]) -> np.ndarray:
        """Indexes into ``footprints`` of those that intersect some polygon (sorted, unique)."""
        return np.unique(self._tree.query(footprints, predicate="intersects")[0])

    def cover(
        self, footprint: Any, transform: Affine, shape: tuple[int, int]
    ) -> dict[str, np.ndarray]:
        """Per class, a (h, w) bool mask of the pixels whose centre lies in its polygons.

        Args:
            footprint: the window's polygon in the scene CRS.
            transform: affine of the pixels as read (a resampled window has
                larger pixels than the scene).
            shape: (h, w) of the pixels as read.

        Overlapping polygons of different classes give both masks the pixel.
        Classes with no pixel in the window are left out.
        """
        from rasterio.features import geometry_mask

        hits = self._tree.query(footprint, predicate="intersects")
        masks = {}
        for name in sorted(set(self._names[hits])):
            geoms = self._geoms[hits[self._names[hits] == name]]
            if any(g.contains(footprint) for g in geoms):
                # Inside one polygon: every pixel centre is (most windows of a field).
                mask = np.ones(shape, dtype=bool)
            else:
                mask = geometry_mask(list(geoms), shape, transform, invert=True)
            if mask.any():
                masks[str(name)] = mask
        return masks


def read_pixels_transform(
    window: Window, scene_transform: Affine, shape: tuple[int, int]
) -> Affine:
    """Affine of ``window``'s pixels when read into ``shape`` (h, w): scaled when resampled."""
    base = window_transform(window, scene_transform)
    h, w = shape
    return base @ Affine.scale(window.width / w, window.height / h)


def _geometry_layers(path: Path) -> list[str]:
    import pyogrio

    try:
        layers = pyogrio.list_layers(path)
    except Exception as exc:  # pyogrio/GDAL raise their own types for unreadable files
        first = " ".join(str(exc).split())[:160]
        raise InputError(f"labels {path} are not a readable vector file ({first})") from exc
    return [str(name) for name, geometry in layers if geometry is not None]


def class_folder_name(value: object) -> str:
    """The ImageFolder folder (and model class) name for a class value of the label field.

    Whole-number floats (Shapefile numbers) lose their ``.0``; path separators
    become ``_``. Empty names and names starting with ``.`` (hidden folders,
    which ``train`` skips) are refused.
    """
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    name = str(value).strip()
    for sep in {os.sep, "/", "\\", "\0"}:
        name = name.replace(sep, "_")
    if not name or name.startswith("."):
        raise InputError(
            f"class value {value!r} cannot be a class folder name (empty or starting with '.')"
        )
    return name


def read_labels(
    path: str | os.PathLike[str], class_field: str, layer: str | None = None
) -> LabelLayer:
    """Read a polygon label layer and check it can label chips.

    Features with an empty class value or without geometry are dropped, points
    and lines are dropped (both with a warning), invalid polygons are repaired
    with ``shapely.make_valid`` keeping their polygonal part.

    Raises:
        InputError: missing or unreadable file, several layers and no ``layer``,
            unknown layer, no CRS, no polygon with a class.
        OptionError: ``class_field`` is not a field of the layer (the message
            lists the fields).
    """
    import geopandas
    import shapely

    path = Path(path)
    if not path.exists():
        raise InputError(f"labels not found: {path}")
    layers = _geometry_layers(path)
    if layer is None:
        if not layers:
            raise InputError(f"labels {path} have no layer with geometries")
        if len(layers) > 1:
            raise OptionError(
                f"labels {path} have {len(layers)} layers ({', '.join(layers)}); "
                "pick one with layer",
                field="layer",
            )
        layer = layers[0]
    elif layer not in layers:
        raise OptionError(
            f"labels {path} have no layer {layer!r}; layers: {', '.join(layers) or 'none'}"
        )
    try:
        frame = geopandas.read_file(path, layer=layer, engine="pyogrio")
    except Exception as exc:
        first = " ".join(str(exc).split())[:160]
        raise InputError(f"labels {path} cannot be read ({first})") from exc
    where = f"labels {path}" + (f" (layer {layer})" if len(layers) > 1 else "")
    if frame.crs is None:
        raise InputError(
            f"{where} have no CRS: set it in QGIS (Layer > Set CRS) or with "
            "ogr2ogr -a_srs EPSG:xxxx, so they can be placed on the scenes"
        )
    fields = [c for c in frame.columns if c != frame.geometry.name]
    if class_field not in fields:
        raise OptionError(
            f"{where} have no field {class_field!r}; fields: {', '.join(fields) or 'none'}"
        )
    warnings = []
    values = frame[class_field]
    no_class = values.isna() | (values.astype(str).str.strip() == "")
    no_geometry = frame.geometry.isna() | frame.geometry.is_empty
    geometry = frame.geometry.copy()
    invalid = ~no_geometry & ~geometry.is_valid
    if invalid.any():
        geometry[invalid] = shapely.make_valid(geometry[invalid].values)
        geometry[invalid] = [_polygonal(g) for g in geometry[invalid]]
        warnings.append(f"{int(invalid.sum())} invalid polygon(s) repaired")
    polygonal = geometry.geom_type.isin(list(_POLYGONAL)) & ~geometry.is_empty
    not_polygon = ~no_geometry & ~polygonal
    if no_class.any():
        warnings.append(f"{int(no_class.sum())} feature(s) without a {class_field!r} value ignored")
    if no_geometry.any():
        warnings.append(f"{int(no_geometry.sum())} feature(s) without geometry ignored")
    if not_polygon.any():
        warnings.append(f"{int(not_polygon.sum())} non-polygon feature(s) ignored")
    keep = ~no_class & ~no_geometry & polygonal
    if not keep.any():
        raise InputError(f"{where} have no polygon with a {class_field!r} value")
    names = [class_folder_name(v) for v in values[keep]]
    by_name: dict[str, set[str]] = {}
    for value, name in zip(values[keep], names, strict=True):
        by_name.setdefault(name, set()).add(str(value))
    clashes = {k: v for k, v in by_name.items() if len(v) > 1}
    if clashes:
        name, raw = next(iter(clashes.items()))
        raise InputError(
            f"class values {', '.join(sorted(map(repr, raw)))} would share the folder {name!r}"
        )
    labels = geopandas.GeoDataFrame(
        {"class": names}, geometry=list(geometry[keep].values), crs=frame.crs
    )
    return LabelLayer(path, layer, labels, sorted(by_name), warnings)


def _polygonal(geometry: Any) -> Any:
    """The polygonal part of a repaired geometry (``make_valid`` may add lines or points)."""
    import shapely

    if geometry is None or geometry.geom_type in _POLYGONAL:
        return geometry
    parts = [g for g in getattr(geometry, "geoms", []) if g.geom_type in _POLYGONAL]
    return shapely.unary_union(parts) if parts else shapely.Polygon()
