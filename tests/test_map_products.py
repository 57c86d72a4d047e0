"""classify's map products end to end: landuse layer, areas CSV and summary, quicklook, --aoi."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import geopandas
import numpy as np
import pytest
import rasterio
import shapely
from PIL import Image
from shapely.geometry import box

from mscn_geo.landuse import scene_footprint
from tests.conftest import TINY_CLASSES
from tests.test_cli import cli

# make_scene's default grid: UTM 33N, 0.5 m pixels from (500000, 5000000).
X0, Y0, PIXEL = 500_000.0, 5_000_000.0, 0.5


def classify_json(
    capsys, scene: Path, model: Path, out: Path, *extra: object
) -> tuple[int, dict, str]:
    code, stdout, err = cli(
        capsys, "classify", scene, "--model", model, "--out", out, "--json", "--device", "cpu",
        "--workers", "1", *extra,
    )  # fmt: skip
    return code, (json.loads(stdout) if code == 0 else {}), err


def test_outputs_areas_landuse_and_quicklook(make_scene, tiny_checkpoint, tmp_path, capsys) -> None:
    scene = make_scene(200, 150, nodata_cols=64)  # the first tile column is all nodata
    out = tmp_path / "out"
    code, summary, err = classify_json(capsys, scene, tiny_checkpoint, out, "--stride", "32")
    assert code == 0, err
    assert set(summary["outputs"]) == {"gpkg", "raster", "areas", "quicklook"}
    with rasterio.open(summary["outputs"]["raster"]) as ds:
        classes = ds.read(1)
    valid = classes != 255
    assert not valid[:, :32].any() and valid[:, 64:].all()  # all-nodata tiles are skipped

    # Areas: 0.25 m2 pixels, from the raster; the same in the CSV and the summary.
    areas = summary["areas"]
    assert areas["method"] == "planar"
    assert areas["valid_m2"] == pytest.approx(valid.sum() * 0.25)
    for class_id, name in enumerate(TINY_CLASSES):
        assert areas["classes"][name]["m2"] == pytest.approx((classes == class_id).sum() * 0.25)
    with open(summary["outputs"]["areas"]) as handle:
        rows = list(csv.DictReader(handle))
    assert [r["class_name"] for r in rows] == TINY_CLASSES
    total = sum(float(r["area_m2"]) for r in rows)
    assert total == pytest.approx(areas["valid_m2"], rel=1e-3)

    # Landuse: dissolved regions covering exactly the classified pixels.
    landuse = geopandas.read_file(summary["outputs"]["gpkg"], layer="landuse")
    assert len(landuse) == summary["landuse_polygons"] > 0
    assert landuse.area.sum() == pytest.approx(valid.sum() * 0.25)
    assert landuse.area_m2.to_numpy() == pytest.approx(landuse.area.to_numpy())
    for class_id in range(len(TINY_CLASSES)):
        union = shapely.union_all(landuse.geometry[landuse.class_id == class_id].values)
        assert union.area == pytest.approx((classes == class_id).sum() * 0.25)

    picture = Image.open(summary["outputs"]["quicklook"])
    assert picture.format == "PNG" and picture.size[0] > 200


def test_no_quicklook(make_scene, tiny_checkpoint, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    code, summary, err = classify_json(
        capsys, make_scene(100, 70), tiny_checkpoint, out, "--no-quicklook"
    )
    assert code == 0, err
    assert "quicklook" not in summary["outputs"]
    assert not list(out.glob("*.png"))


def test_aoi_in_another_crs(make_scene, tiny_checkpoint, tmp_path, capsys) -> None:
    # 256 x 192 px scene, 64 px tiles; the AOI is 40..100 m east, 20..70 m south of
    # the top left corner, given in WGS 84.
    scene = make_scene(256, 192)
    aoi_utm = box(X0 + 40, Y0 - 70, X0 + 100, Y0 - 20)
    aoi_file = tmp_path / "aoi.geojson"
    geopandas.GeoDataFrame(geometry=[aoi_utm], crs=32633).to_crs(4326).to_file(aoi_file)
    code, summary, err = classify_json(
        capsys, scene, tiny_checkpoint, tmp_path / "out", "--aoi", aoi_file
    )
    assert code == 0, err
    # Tiles touching x 80..200 px, y 40..140 px: columns 1..3, rows 0..2.
    tiles = geopandas.read_file(summary["outputs"]["gpkg"], layer="tiles")
    got = sorted(zip(tiles.row, tiles.col, strict=True))
    assert got == [(r, c) for r in range(3) for c in range(1, 4)]
    assert summary["skipped"] == 12 - 9
    with rasterio.open(summary["outputs"]["raster"]) as ds:
        classes = ds.read(1)
    inside = np.zeros(classes.shape, bool)
    inside[40:140, 80:200] = True
    # Reprojected through WGS 84: the edges move by far less than a pixel.
    assert ((classes != 255) == inside).mean() > 0.998
    assert summary["areas"]["valid_m2"] == pytest.approx(aoi_utm.area, rel=0.01)
    landuse = geopandas.read_file(summary["outputs"]["gpkg"], layer="landuse")
    assert shapely.union_all(landuse.geometry.values).symmetric_difference(aoi_utm).area < 1.0


@pytest.mark.parametrize("cut", [True, False], ids=["nodata-and-aoi", "all-valid"])
@pytest.mark.parametrize("crs", ["EPSG:32633", "EPSG:4326"])
def test_areas_tallied_while_writing_equal_the_raster_read_back(
    make_scene, tiny_checkpoint, tmp_path, capsys, crs, cut
) -> None:
    """The areas come from the strips as they are written (counted per cell where
    pixels share one area): they must be the written raster's, pixel for pixel
    (nodata columns, AOI cut, all-valid strips, geodesic rows)."""
    from mscn_geo.areas import raster_areas

    scene = make_scene(250, 190, crs=crs, nodata_cols=40 if cut else 0)
    extra: list[object] = ["--stride", "32", "--min-confidence", "0.5"]
    if cut:
        with rasterio.open(scene) as ds:
            left, bottom, right, top = ds.bounds
        aoi = box(left, bottom, left + 0.7 * (right - left), top - 0.2 * (top - bottom))
        aoi_file = tmp_path / "aoi.geojson"
        geopandas.GeoDataFrame(geometry=[aoi], crs=crs).to_file(aoi_file)
        extra += ["--aoi", aoi_file]
    code, summary, err = classify_json(capsys, scene, tiny_checkpoint, tmp_path / "out", *extra)
    assert code == 0, err
    names = [*TINY_CLASSES, "uncertain"]
    read_back = raster_areas(Path(summary["outputs"]["raster"]), names, [0, 1, 2, 254]).to_dict()
    assert summary["areas"]["method"] == ("geodesic" if crs == "EPSG:4326" else "planar")
    assert summary["areas"]["valid_pixels"] == read_back["valid_pixels"] > 0
    assert summary["areas"]["classes"] == read_back["classes"]  # pixels, m2, ha, shares
    assert sum(c["pixels"] for c in read_back["classes"].values()) == read_back["valid_pixels"]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: d / "nope.gpkg", "no such file"),
        (lambda d: (d / "x.geojson").write_text("[1, 2") and d / "x.geojson", "cannot be read"),
        (
            lambda d: (
                geopandas.GeoDataFrame(geometry=[box(0, 0, 1, 1)]).to_file(d / "a.shp")
                or d / "a.shp"
            ),
            "has no CRS",
        ),
        (
            lambda d: (
                geopandas.GeoDataFrame(geometry=[box(0, 0, 1, 1)], crs=4326).to_file(d / "far.gpkg")
                or d / "far.gpkg"
            ),
            "does not overlap the scene",
        ),
    ],
    ids=["missing", "corrupt", "no-crs", "elsewhere"],
)
def test_bad_aoi_is_one_line_exit_2_nothing_written(
    make, message, make_scene, tiny_checkpoint, tmp_path, capsys
) -> None:
    aoi = make(tmp_path)
    out = tmp_path / "out"
    code, _, err = classify_json(capsys, make_scene(100, 70), tiny_checkpoint, out, "--aoi", aoi)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and str(aoi) in lines[0]
    assert not out.exists() or not list(out.iterdir())


def test_footprint_is_the_scene_extent() -> None:
    from rasterio.transform import from_origin

    footprint = scene_footprint(from_origin(X0, Y0, PIXEL, PIXEL), 200, 100)
    assert footprint.equals(box(X0, Y0 - 50, X0 + 100, Y0))
