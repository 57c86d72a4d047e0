"""What QGIS (the system install, not the venv) shows for our outputs."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pyogrio
import pytest
from affine import Affine
from rasterio.transform import from_origin
from rasterio.windows import Window

from mscn_geo.io import (
    ClassRasterWriter,
    atomic_outputs,
    class_colours,
    output_paths,
    write_landuse_layer,
    write_tiles_gpkg,
)
from mscn_geo.landuse import landuse_frame
from tests.io.test_vector import make_tiles

QGIS_PYTHON = "/usr/bin/python3"
CHECK_SCRIPT = Path(__file__).resolve().parents[1] / "qgis_check.py"
NAMES = ["forest", "river", "denseresidential"]
COLOURS = class_colours(NAMES)


def _qgis_available() -> bool:
    try:
        probe = subprocess.run(
            [QGIS_PYTHON, "-c", "import qgis.core"],
            capture_output=True,
            timeout=60,
            env={**os.environ, "QT_QPA_PLATFORM": "offscreen"},
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


pytestmark = [
    pytest.mark.qgis,
    pytest.mark.skipif(not _qgis_available(), reason="QGIS python (qgis.core) not installed"),
]


def _qgis_report(gpkg: Path, raster: Path, layers: tuple[str, ...] = ("tiles",)) -> dict:
    env = {key: value for key, value in os.environ.items() if not key.startswith("PYTHON")}
    env["QT_QPA_PLATFORM"] = "offscreen"
    layer_args = [arg for layer in layers for arg in ("--layer", layer)]
    result = subprocess.run(
        [QGIS_PYTHON, str(CHECK_SCRIPT), "--gpkg", str(gpkg), *layer_args, "--raster", str(raster)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    # GDAL warnings go to QGIS's message log in the desktop app, to stderr headless.
    return {**json.loads(result.stdout), "stderr": result.stderr}


@pytest.mark.parametrize(
    ("crs", "transform", "size", "origin"),
    [
        ("EPSG:32633", from_origin(500_000.0, 5_000_000.0, 1.0, 1.0), 100.0, (500_000.0, 5e6)),
        ("EPSG:4326", from_origin(10.0, 50.0, 0.00001, 0.00001), 0.001, (10.0, 50.0)),
    ],
    ids=["utm33n", "wgs84"],
)
def test_qgis_shows_styled_layers(
    tmp_path: Path, crs: str, transform: object, size: float, origin: tuple[float, float]
) -> None:
    paths = {
        key: path
        for key, path in output_paths(Path("scene.tif"), tmp_path).items()
        if key in ("gpkg", "raster", "aux", "qml")
    }
    tiles = make_tiles(crs, rows=2, cols=3, size=size, origin=origin)
    data = np.full((200, 300), 255, np.uint8)
    for record in tiles.itertuples():
        data[
            record.row * 100 : (record.row + 1) * 100, record.col * 100 : (record.col + 1) * 100
        ] = record.class_id
    with atomic_outputs(list(paths.values())) as temps:
        temp = dict(zip(paths, temps, strict=True))
        write_tiles_gpkg(temp["gpkg"], tiles, NAMES, COLOURS)
        with ClassRasterWriter(
            temp["raster"],
            width=300,
            height=200,
            crs=crs,
            transform=transform,
            class_names=NAMES,
            colours=COLOURS,
        ) as writer:
            writer.write(Window(0, 0, 300, 100), data[:100])
            writer.write(Window(0, 100, 300, 100), data[100:])

    report = _qgis_report(paths["gpkg"], paths["raster"])
    assert report["qgis_version"].startswith("3.")

    vector = report["vector"]
    assert vector["valid"] is True
    assert vector["crs"] == crs
    assert vector["feature_count"] == 6
    # The default style from layer_styles was applied (QGIS's own default is singleSymbol).
    assert vector["renderer"] == "categorizedSymbol"
    assert vector["attribute"] == "class_name"
    assert [c["label"] for c in vector["categories"]] == NAMES
    assert [tuple(c["colour"]) for c in vector["categories"]] == COLOURS

    raster = report["raster"]
    assert raster["valid"] is True
    assert raster["crs"] == crs
    assert (raster["width"], raster["height"]) == (300, 200)
    assert raster["nodata"] == 255
    assert raster["renderer"] == "paletted"
    assert [c["label"] for c in raster["classes"]] == NAMES
    assert [c["value"] for c in raster["classes"]] == [0, 1, 2]
    assert [tuple(c["colour"]) for c in raster["classes"]] == COLOURS
    assert raster["legend"] == NAMES
    # Without the .qml, QGIS still names the classes, from the GDAL category names.
    assert raster["provider_colour_table_labels"][:3] == NAMES


def test_qgis_labels_come_from_category_names_without_qml(tmp_path: Path) -> None:
    raster = tmp_path / "scene_classes.tif"
    with ClassRasterWriter(
        raster,
        width=300,
        height=200,
        crs="EPSG:32633",
        transform=from_origin(500_000.0, 5_000_000.0, 1.0, 1.0),
        class_names=NAMES,
        colours=COLOURS,
        qgis_style=False,
    ) as writer:
        writer.write(Window(0, 0, 300, 200), np.ones((200, 300), np.uint8))
    gpkg = tmp_path / "scene.gpkg"
    write_tiles_gpkg(gpkg, make_tiles().iloc[:0], NAMES, COLOURS)
    report = _qgis_report(gpkg, raster)
    assert report["raster"]["renderer"] == "paletted"
    labels = [c["label"] for c in report["raster"]["classes"]]
    # GDAL's colour table always has 256 entries; QGIS lists them all, named where it can.
    assert labels[:3] == NAMES
    assert labels[3] == "3"
    # An empty layer is still valid and styled.
    assert report["vector"]["valid"] is True
    assert report["vector"]["feature_count"] == 0
    assert report["vector"]["renderer"] == "categorizedSymbol"


def _version_warnings(report: dict) -> list[str]:
    messages = [entry["message"] for entry in report["log"]] + report["stderr"].splitlines()
    return [m for m in messages if "GeoPackage" in m and "partially supported" in m]


def _landuse_outputs(folder: Path) -> tuple[Path, Path]:
    classes = np.array([[0, 0, 1], [2, 1, 1], [2, 2, 0]], np.uint8)
    transform = from_origin(500_000.0, 5_000_000.0, 1.0, 1.0)
    landuse = landuse_frame(
        classes, np.full((3, 3), 0.8), transform @ Affine.scale(100), "EPSG:32633", NAMES
    )
    gpkg, raster = folder / "scene.gpkg", folder / "scene_classes.tif"
    write_tiles_gpkg(gpkg, make_tiles(), NAMES, COLOURS)
    write_landuse_layer(gpkg, landuse, NAMES, COLOURS)
    with ClassRasterWriter(
        raster, width=300, height=300, crs="EPSG:32633", transform=transform,
        class_names=NAMES, colours=COLOURS,
    ) as writer:  # fmt: skip
        writer.write(Window(0, 0, 300, 300), classes.repeat(100, 0).repeat(100, 1))
    return gpkg, raster


def test_qgis_opens_landuse_styled_without_version_warning(tmp_path: Path) -> None:
    gpkg, raster = _landuse_outputs(tmp_path)
    report = _qgis_report(gpkg, raster, layers=("tiles", "landuse"))
    landuse = report["vectors"]["landuse"]
    assert landuse["valid"] is True
    assert landuse["crs"] == "EPSG:32633"
    assert landuse["feature_count"] == 4  # forest twice (corners), river, denseresidential
    assert landuse["fields"][-4:] == ["class_id", "class_name", "area_m2", "confidence"]
    assert landuse["renderer"] == "categorizedSymbol"
    assert landuse["attribute"] == "class_name"
    assert [c["label"] for c in landuse["categories"]] == NAMES
    assert [tuple(c["colour"]) for c in landuse["categories"]] == COLOURS
    assert report["vectors"]["tiles"]["renderer"] == "categorizedSymbol"
    assert _version_warnings(report) == []
    gdal_messages = [m for m in report["stderr"].splitlines() if m.startswith(("Warning", "ERROR"))]
    assert gdal_messages == []


def test_qgis_does_warn_about_geopackage_1_4(tmp_path: Path) -> None:
    # The check above can fail: the same layer written as GeoPackage 1.4 is warned about.
    path = tmp_path / "v14.gpkg"
    pyogrio.write_dataframe(make_tiles(), path, layer="tiles", dataset_options={"VERSION": "1.4"})
    _, raster = _landuse_outputs(tmp_path)
    report = _qgis_report(path, raster)
    gdal = tuple(int(part) for part in report["gdal_version"].split(".")[:2])
    if gdal >= (3, 8):
        pytest.skip(f"QGIS's GDAL {report['gdal_version']} reads GeoPackage 1.4")
    assert len(_version_warnings(report)) == 3  # as the issue saw it
