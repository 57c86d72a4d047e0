"""The scene GeoPackage: the ``tiles`` and ``landuse`` polygon layers, styled for QGIS.

Every GeoPackage is written as version 1.2 (:data:`GPKG_VERSION`): GDAL >= 3.8
writes 1.4 by default, which QGIS 3.22 LTR (GDAL 3.6) opens with a warning
("may only be partially supported") per layer.
"""

from __future__ import annotations

import contextlib
import sqlite3
import warnings
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import geopandas
import numpy as np
import pandas as pd
import pyogrio

from mscn_geo.io.styles import polygon_style_qml

__all__ = [
    "GPKG_VERSION",
    "LANDUSE_COLUMNS",
    "LAYER_STYLES",
    "read_layer_styles",
    "tile_columns",
    "write_landuse_layer",
    "write_tiles_gpkg",
]

#: Table where QGIS looks for styles stored inside a GeoPackage.
LAYER_STYLES = "layer_styles"

#: GeoPackage version written (GDAL's ``VERSION`` creation option); read without
#: warnings by every QGIS LTR still in use.
GPKG_VERSION = "1.2"

#: Attribute columns of the ``landuse`` layer, in order, with their numpy dtypes:
#: class id and name, area in square metres (NaN without CRS), mean confidence.
LANDUSE_COLUMNS: dict[str, str] = {
    "class_id": "int32",
    "class_name": "str",
    "area_m2": "float64",
    "confidence": "float64",
}

_STYLE_NAME = "mscn-geo classes"


def tile_columns(class_names: Sequence[str]) -> dict[str, str]:
    """Attribute columns of the tiles layer, in order, with their numpy dtypes.

    ``class_id``, ``class_name``, ``confidence``, ``margin``, ``entropy``, one
    ``p_<class>`` per class, ``row``, ``col``, ``nodata_fraction``, ``padded``.
    ``margin`` and ``entropy`` (:mod:`mscn_geo.uncertainty`) are computed from the
    ``p_<class>`` columns when the frame lacks them.
    """
    columns = {"class_id": "int32", "class_name": "str", "confidence": "float64"}
    columns |= {"margin": "float64", "entropy": "float64"}
    columns |= {f"p_{name}": "float64" for name in class_names}
    columns |= {"row": "int32", "col": "int32", "nodata_fraction": "float64", "padded": "bool"}
    return columns


def _conform(frame: geopandas.GeoDataFrame, columns: dict[str, str]) -> geopandas.GeoDataFrame:
    missing = [name for name in columns if name not in frame.columns]
    if missing:
        raise ValueError(f"frame lacks columns {missing}")
    extra = [c for c in frame.columns if c not in columns and c != frame.geometry.name]
    data: dict[str, object] = {}
    for name, dtype in columns.items():
        values = frame[name]
        if dtype == "str":
            # Keep real strings (and an object column for an empty frame) so the
            # field is created as text, not as whatever an empty column defaults to.
            data[name] = pd.Series([str(v) for v in values], index=frame.index, dtype=object)
        else:
            data[name] = values.to_numpy(dtype=np.dtype(dtype))
    for name in extra:
        data[name] = frame[name]
    return geopandas.GeoDataFrame(
        data, geometry=frame.geometry.values, crs=frame.crs, index=frame.index
    )


def write_tiles_gpkg(
    path: Path,
    tiles: geopandas.GeoDataFrame,
    class_names: Sequence[str],
    colours: Sequence[tuple[int, int, int]],
    layer: str = "tiles",
    extra_classes: Sequence[tuple[str, tuple[int, int, int]]] = (),
) -> None:
    """Write the tiles layer and its default QGIS style to the GeoPackage ``path``.

    ``tiles`` has a polygon geometry (in the scene's CRS, or no CRS) and the
    columns of :func:`tile_columns`; they are written in that order with fixed
    types (extra columns follow). An empty frame still gives a valid ``Polygon``
    layer with the full schema. The style (categorised by ``class_name``, one
    colour per class) goes in the ``layer_styles`` table with the schema QGIS uses,
    registered in ``gpkg_contents`` as an attributes table, marked
    ``useAsDefault`` so QGIS applies it when the layer is opened. ``extra_classes``:
    (name, colour) of values beyond the model's classes that ``class_name`` may
    hold (``uncertain``); they get a category in the style.
    """
    probs = [f"p_{name}" for name in class_names]
    if all(p in tiles.columns for p in probs) and not {"margin", "entropy"} <= set(tiles.columns):
        from mscn_geo.uncertainty import entropy, margin

        p = tiles[probs].to_numpy(dtype=np.float64).reshape(len(tiles), len(probs))
        tiles = tiles.assign(margin=margin(p), entropy=entropy(p))
    write_polygon_layer(
        path,
        _conform(tiles, tile_columns(class_names)),
        layer,
        [*class_names, *(name for name, _ in extra_classes)],
        [*colours, *(colour for _, colour in extra_classes)],
    )


def write_landuse_layer(
    path: Path,
    landuse: geopandas.GeoDataFrame,
    class_names: Sequence[str],
    colours: Sequence[tuple[int, int, int]],
    layer: str = "landuse",
) -> None:
    """Add the land-use layer (columns :data:`LANDUSE_COLUMNS`) and its QGIS style to ``path``.

    Same rules as :func:`write_tiles_gpkg`; the GeoPackage may already hold the
    ``tiles`` layer (the new layer is added next to it).
    """
    write_polygon_layer(path, _conform(landuse, LANDUSE_COLUMNS), layer, class_names, colours)


def write_polygon_layer(
    path: Path,
    frame: geopandas.GeoDataFrame,
    layer: str,
    class_names: Sequence[str],
    colours: Sequence[tuple[int, int, int]],
) -> None:
    """Write ``frame`` (polygons, columns in their final order and types) as ``layer``
    of the GeoPackage ``path`` with its default QGIS style (categorised by ``class_name``).

    A new file is created as GeoPackage :data:`GPKG_VERSION`; an existing one gets
    the layer added.
    """
    path = Path(path)
    geometry_types = set(frame.geometry.geom_type.dropna().unique())
    if not geometry_types <= {"Polygon"}:
        raise ValueError(f"{layer} must be polygons, got {sorted(geometry_types)}")
    with warnings.catch_warnings():
        # No CRS means a pixel-space scene; the caller chose that.
        warnings.filterwarnings("ignore", message="'crs' was not provided", category=UserWarning)
        pyogrio.write_dataframe(
            frame,
            path,
            layer=layer,
            driver="GPKG",
            geometry_type="Polygon",
            promote_to_multi=False,
            dataset_options={"VERSION": GPKG_VERSION},
        )
    add_layer_style(path, layer, polygon_style_qml(class_names, colours))


def _gpkg_timestamp() -> datetime:
    # GeoPackage DATETIME is "YYYY-MM-DDTHH:MM:SS.SSSZ"; OGR drops the fraction
    # when it is zero and readers then warn, so keep whole, non-zero milliseconds.
    now = datetime.now(timezone.utc)
    return now.replace(microsecond=max(1000, now.microsecond // 1000 * 1000))


def _geometry_column(path: Path, layer: str) -> str:
    with contextlib.closing(sqlite3.connect(path)) as db:
        row = db.execute(
            "SELECT column_name FROM gpkg_geometry_columns WHERE table_name = ?", (layer,)
        ).fetchone()
    if row is None:
        raise ValueError(f"{path} has no geometry layer {layer!r}")
    return str(row[0])


def add_layer_style(
    path: Path, layer: str, qml: str, name: str = _STYLE_NAME, use_as_default: bool = True
) -> None:
    """Store ``qml`` as a style of ``layer`` in the GeoPackage's ``layer_styles`` table.

    Uses the columns QGIS creates (``f_table_catalog``, ``f_table_schema``,
    ``f_table_name``, ``f_geometry_column``, ``styleName``, ``styleQML``,
    ``styleSLD``, ``useAsDefault``, ``description``, ``owner``, ``ui``,
    ``update_time``; feature id ``id``), written through OGR so the table is
    registered the way QGIS registers it. QGIS matches a style on empty catalog
    and schema, the layer name and its geometry column.
    """
    path = Path(path)
    row = pd.DataFrame(
        {
            "f_table_catalog": [""],
            "f_table_schema": [""],
            "f_table_name": [layer],
            "f_geometry_column": [_geometry_column(path, layer)],
            "styleName": [name],
            "styleQML": [qml],
            "styleSLD": pd.Series([None], dtype=object),
            "useAsDefault": [bool(use_as_default)],
            "description": [f"{name} (written by mscn-geo)"],
            "owner": [""],
            "ui": pd.Series([None], dtype=object),
            "update_time": [_gpkg_timestamp()],
        }
    )
    exists = LAYER_STYLES in {name for name, _ in pyogrio.list_layers(path)}
    pyogrio.write_dataframe(
        row,
        path,
        layer=LAYER_STYLES,
        driver="GPKG",
        append=exists,
        layer_options=None if exists else {"FID": "id"},
        dataset_options={"VERSION": GPKG_VERSION},
    )


def read_layer_styles(path: Path) -> list[dict]:
    """Rows of the GeoPackage's ``layer_styles`` table as dicts (empty when there is none)."""
    with contextlib.closing(
        sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=ro", uri=True)
    ) as db:
        db.row_factory = sqlite3.Row
        found = db.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (LAYER_STYLES,)
        ).fetchone()
        if found is None:
            return []
        return [dict(row) for row in db.execute(f"SELECT * FROM {LAYER_STYLES} ORDER BY id")]
