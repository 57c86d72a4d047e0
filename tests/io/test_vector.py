"""write_tiles_gpkg: the tiles layer and its QGIS default style."""

from __future__ import annotations

import contextlib
import sqlite3
import xml.etree.ElementTree as ET
from pathlib import Path

import geopandas
import numpy as np
import pyogrio
import pytest
from pyproj import CRS
from shapely.geometry import box

from mscn_geo.io import class_colours, read_layer_styles, write_tiles_gpkg

NAMES = ["forest", "river", "denseresidential"]
COLOURS = class_colours(NAMES)


def make_tiles(
    crs: str | None = "EPSG:32633",
    rows: int = 2,
    cols: int = 3,
    size: float = 112.0,
    origin: tuple[float, float] = (500_000.0, 5_000_000.0),
    names: list[str] = NAMES,
    seed: int = 0,
) -> geopandas.GeoDataFrame:
    """A tiles frame like the classifier writes: softmax probabilities, one tile per row/col."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(rows * cols, len(names)))
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    records = []
    for index in range(rows * cols):
        row, col = divmod(index, cols)
        class_id = int(probs[index].argmax())
        x0, y0 = origin[0] + col * size, origin[1] - (row + 1) * size
        records.append(
            {
                "class_id": class_id,
                "class_name": names[class_id],
                "confidence": float(probs[index, class_id]),
                **{f"p_{name}": float(probs[index, i]) for i, name in enumerate(names)},
                "row": row,
                "col": col,
                "nodata_fraction": 0.25 if col == cols - 1 else 0.0,
                "padded": col == cols - 1,
                "geometry": box(x0, y0, x0 + size, y0 + size),
            }
        )
    return geopandas.GeoDataFrame(records, geometry="geometry", crs=crs)


@pytest.fixture(params=["EPSG:32633", "EPSG:4326"], ids=["utm33n", "wgs84"])
def tiles(request: pytest.FixtureRequest) -> geopandas.GeoDataFrame:
    if request.param == "EPSG:4326":
        return make_tiles("EPSG:4326", size=0.001, origin=(10.0, 50.0))
    return make_tiles("EPSG:32633")


def test_columns_types_and_values_round_trip(tmp_path: Path, tiles: geopandas.GeoDataFrame) -> None:
    path = tmp_path / "scene.gpkg"
    write_tiles_gpkg(path, tiles, NAMES, COLOURS)
    info = pyogrio.read_info(path, layer="tiles")
    expected_fields = [
        "class_id",
        "class_name",
        "confidence",
        "margin",
        "entropy",
        "p_forest",
        "p_river",
        "p_denseresidential",
        "row",
        "col",
        "nodata_fraction",
        "padded",
    ]
    assert list(info["fields"]) == expected_fields
    assert dict(zip(info["fields"], info["ogr_types"], strict=True)) == {
        "class_id": "OFTInteger",
        "class_name": "OFTString",
        "confidence": "OFTReal",
        "margin": "OFTReal",
        "entropy": "OFTReal",
        "p_forest": "OFTReal",
        "p_river": "OFTReal",
        "p_denseresidential": "OFTReal",
        "row": "OFTInteger",
        "col": "OFTInteger",
        "nodata_fraction": "OFTReal",
        "padded": "OFTInteger",
    }
    assert info["ogr_subtypes"][expected_fields.index("padded")] == "OFSTBoolean"
    assert info["geometry_type"] == "Polygon"
    assert info["features"] == 6
    with contextlib.closing(sqlite3.connect(path)) as db:  # the README names it `geom`
        columns = db.execute("SELECT column_name FROM gpkg_geometry_columns").fetchall()
    assert columns == [("geom",)]

    back = geopandas.read_file(path, layer="tiles", engine="pyogrio")
    assert back["class_id"].dtype.kind == "i"
    assert back["padded"].dtype == bool
    assert back["class_id"].tolist() == tiles["class_id"].tolist()
    assert back["class_name"].tolist() == tiles["class_name"].tolist()
    assert back["padded"].tolist() == [False, False, True, False, False, True]
    probabilities = back[[f"p_{n}" for n in NAMES]].to_numpy()
    # Each p_<class> column holds that class's input probability (not a copy of another
    # class's, not reordered, not rounded beyond float32).
    given = tiles[[f"p_{n}" for n in NAMES]].to_numpy()
    np.testing.assert_allclose(probabilities, given, rtol=1e-6, atol=0)
    np.testing.assert_allclose(back["confidence"], tiles["confidence"], rtol=1e-6, atol=0)
    np.testing.assert_allclose(back["nodata_fraction"], tiles["nodata_fraction"])
    assert back["row"].tolist() == tiles["row"].tolist()
    assert back["col"].tolist() == tiles["col"].tolist()
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(back["confidence"], probabilities.max(axis=1))
    top2 = np.sort(probabilities, axis=1)[:, -2:]
    np.testing.assert_allclose(back["margin"], top2[:, 1] - top2[:, 0], atol=1e-6)
    by_hand = -(probabilities * np.log(probabilities)).sum(axis=1) / np.log(len(NAMES))
    np.testing.assert_allclose(back["entropy"], by_hand, atol=1e-6)
    assert [NAMES[i] for i in probabilities.argmax(axis=1)] == back["class_name"].tolist()
    assert back.geometry.geom_equals_exact(tiles.geometry, tolerance=0).all()


def test_crs_round_trips(tmp_path: Path, tiles: geopandas.GeoDataFrame) -> None:
    path = tmp_path / "scene.gpkg"
    write_tiles_gpkg(path, tiles, NAMES, COLOURS)
    back = geopandas.read_file(path, layer="tiles", engine="pyogrio")
    assert back.crs == tiles.crs
    assert CRS.from_user_input(pyogrio.read_info(path, layer="tiles")["crs"]) == tiles.crs
    with contextlib.closing(sqlite3.connect(path)) as db:
        (srs_id,) = db.execute(
            "SELECT srs_id FROM gpkg_contents WHERE table_name='tiles'"
        ).fetchone()
    assert srs_id == tiles.crs.to_epsg()


def test_layer_style_is_stored_the_qgis_way(tmp_path: Path) -> None:
    path = tmp_path / "scene.gpkg"
    write_tiles_gpkg(path, make_tiles(), NAMES, COLOURS)
    styles = read_layer_styles(path)
    assert len(styles) == 1
    style = styles[0]
    assert style["f_table_catalog"] == ""
    assert style["f_table_schema"] == ""
    assert style["f_table_name"] == "tiles"
    assert style["f_geometry_column"] == pyogrio.read_info(path, layer="tiles")["geometry_name"]
    assert style["useAsDefault"] == 1
    assert style["styleName"]
    root = ET.fromstring(style["styleQML"])
    labels = [c.get("label") for c in root.iter("category")]
    assert labels == NAMES
    for name in NAMES:
        assert name in style["styleQML"]

    # Registered like QGIS registers it (an OGR attributes table, FID column "id").
    with contextlib.closing(sqlite3.connect(path)) as db:
        contents = dict(db.execute("SELECT table_name, data_type FROM gpkg_contents").fetchall())
        columns = [row[1] for row in db.execute("PRAGMA table_info(layer_styles)")]
    assert contents == {"tiles": "features", "layer_styles": "attributes"}
    assert columns == [
        "id",
        "f_table_catalog",
        "f_table_schema",
        "f_table_name",
        "f_geometry_column",
        "styleName",
        "styleQML",
        "styleSLD",
        "useAsDefault",
        "description",
        "owner",
        "ui",
        "update_time",
    ]
    layers = {name: kind for name, kind in pyogrio.list_layers(path)}
    assert layers == {"tiles": "Polygon", "layer_styles": None}


def test_empty_frame_gives_valid_layer_with_schema(tmp_path: Path) -> None:
    path = tmp_path / "empty.gpkg"
    empty = make_tiles().iloc[:0]
    write_tiles_gpkg(path, empty, NAMES, COLOURS)
    info = pyogrio.read_info(path, layer="tiles")
    assert info["features"] == 0
    assert info["geometry_type"] == "Polygon"
    assert CRS.from_user_input(info["crs"]) == CRS.from_epsg(32633)
    assert "p_river" in list(info["fields"])
    assert info["ogr_types"][list(info["fields"]).index("class_name")] == "OFTString"
    assert len(read_layer_styles(path)) == 1


def test_frame_built_without_dtypes_is_typed(tmp_path: Path) -> None:
    # The classifier may build an empty frame from bare column names.
    columns = ["class_id", "class_name", "confidence", *[f"p_{n}" for n in NAMES]]
    columns += ["row", "col", "nodata_fraction", "padded"]
    bare = geopandas.GeoDataFrame(
        {name: [] for name in columns}, geometry=geopandas.GeoSeries([]), crs="EPSG:32633"
    )
    path = tmp_path / "bare.gpkg"
    write_tiles_gpkg(path, bare, NAMES, COLOURS)
    info = pyogrio.read_info(path, layer="tiles")
    types = dict(zip(info["fields"], info["ogr_types"], strict=True))
    assert types["class_id"] == "OFTInteger"
    assert types["confidence"] == "OFTReal"
    assert types["class_name"] == "OFTString"


def test_no_crs(tmp_path: Path) -> None:
    path = tmp_path / "pix.gpkg"
    write_tiles_gpkg(path, make_tiles(crs=None, origin=(0.0, 0.0)), NAMES, COLOURS)
    back = geopandas.read_file(path, layer="tiles", engine="pyogrio")
    assert back.crs is None
    assert len(back) == 6


def test_missing_column_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="p_river"):
        write_tiles_gpkg(tmp_path / "x.gpkg", make_tiles().drop(columns="p_river"), NAMES, COLOURS)


def test_read_layer_styles_without_table(tmp_path: Path) -> None:
    path = tmp_path / "plain.gpkg"
    pyogrio.write_dataframe(make_tiles(), path, layer="tiles")
    assert read_layer_styles(path) == []


def test_geopackage_is_version_1_2(tmp_path: Path) -> None:
    # QGIS 3.22 LTR (GDAL 3.6) warns three times on GeoPackage 1.4, GDAL >= 3.8's default.
    path = tmp_path / "scene.gpkg"
    write_tiles_gpkg(path, make_tiles(), NAMES, COLOURS)
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute("PRAGMA application_id").fetchone()[0] == 0x47504B47  # "GPKG"
        assert db.execute("PRAGMA user_version").fetchone()[0] == 10200
