"""The tiles GeoPackage: one polygon per classified tile, styled for QGIS."""

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

__all__ = ["LAYER_STYLES", "read_layer_styles", "tile_columns", "write_tiles_gpkg"]

#: Table where QGIS looks for styles stored inside a GeoPackage.
LAYER_STYLES = "layer_styles"

_STYLE_NAME = "mscn-geo classes"


def tile_columns(class_names: Sequence[str]) -> dict[str, str]:
    """Attribute columns of the tiles layer, in order, with their numpy dtypes.

    ``class_id``, ``class_name``, ``confidence``, one ``p_<class>`` per class,
    ``row``, ``col``, ``nodata_fraction``, ``padded``.
    """
    columns = {"class_id": "int32", "class_name": "str", "confidence": "float64"}
    columns |= {f"p_{name}": "float64" for name in class_names}
    columns |= {"row": "int32", "col": "int32", "nodata_fraction": "float64", "padded": "bool"}
    return columns


def _conform(tiles: geopandas.GeoDataFrame, class_names: Sequence[str]) -> geopandas.GeoDataFrame:
    columns = tile_columns(class_names)
    missing = [name for name in columns if name not in tiles.columns]
    if missing:
        raise ValueError(f"tiles frame lacks columns {missing}")
    extra = [c for c in tiles.columns if c not in columns and c != tiles.geometry.name]
    data: dict[str, object] = {}
    for name, dtype in columns.items():
        values = tiles[name]
        if dtype == "str":
            # Keep real strings (and an object column for an empty frame) so the
            # field is created as text, not as whatever an empty column defaults to.
            data[name] = pd.Series([str(v) for v in values], index=tiles.index, dtype=object)
        else:
            data[name] = values.to_numpy(dtype=np.dtype(dtype))
    for name in extra:
        data[name] = tiles[name]
    return geopandas.GeoDataFrame(
        data, geometry=tiles.geometry.values, crs=tiles.crs, index=tiles.index
    )


def write_tiles_gpkg(
    path: Path,
    tiles: geopandas.GeoDataFrame,
    class_names: Sequence[str],
    colours: Sequence[tuple[int, int, int]],
    layer: str = "tiles",
) -> None:
    """Write the tiles layer and its default QGIS style to the GeoPackage ``path``.

    ``tiles`` has a polygon geometry (in the scene's CRS, or no CRS) and the
    columns of :func:`tile_columns`; they are written in that order with fixed
    types (extra columns follow). An empty frame still gives a valid ``Polygon``
    layer with the full schema. The style (categorised by ``class_name``, one
    colour per class) goes in the ``layer_styles`` table with the schema QGIS uses,
    registered in ``gpkg_contents`` as an attributes table, marked
    ``useAsDefault`` so QGIS applies it when the layer is opened.
    """
    path = Path(path)
    frame = _conform(tiles, class_names)
    geometry_types = set(frame.geometry.geom_type.dropna().unique())
    if not geometry_types <= {"Polygon"}:
        raise ValueError(f"tiles must be polygons, got {sorted(geometry_types)}")
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
