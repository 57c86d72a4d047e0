"""Per-class areas from a class raster read back: planar by hand, geodesic against pyproj.Geod."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pyproj
import pytest
from rasterio.transform import from_origin
from rasterio.windows import Window
from shapely.geometry import box

from mscn_geo.areas import raster_areas, write_areas_csv
from mscn_geo.io import ClassRasterWriter, class_colours

NAMES = ["forest", "river", "denseresidential"]


def write_classes(path: Path, data: np.ndarray, crs: str | None, transform: object) -> Path:
    height, width = data.shape
    with ClassRasterWriter(
        path,
        width=width,
        height=height,
        crs=crs,
        transform=transform,
        class_names=NAMES,
        colours=class_colours(NAMES),
    ) as writer:
        writer.write(Window(0, 0, width, height), data)
    return path


def classes_map(height: int = 700, width: int = 900) -> np.ndarray:
    data = np.full((height, width), 255, np.uint8)
    data[:300, :500] = 0  # forest
    data[300:, :200] = 1  # river
    data[100:650, 600:] = 2  # denseresidential
    return data


def test_planar_areas_by_hand(tmp_path: Path) -> None:
    # UTM is in metres; 0.3 m pixels are 0.09 m2 each.
    path = write_classes(
        tmp_path / "c.tif", classes_map(), "EPSG:32633", from_origin(5e5, 5e6, 0.3, 0.3)
    )
    areas = raster_areas(path, NAMES)
    assert areas.method == "planar"
    by_name = {c.class_name: c for c in areas.classes}
    assert by_name["forest"].pixels == 300 * 500
    assert by_name["forest"].area_m2 == pytest.approx(300 * 500 * 0.09)
    assert by_name["river"].area_m2 == pytest.approx(400 * 200 * 0.09)
    assert by_name["denseresidential"].area_ha == pytest.approx(550 * 300 * 0.09 / 1e4)
    valid = (300 * 500 + 400 * 200 + 550 * 300) * 0.09
    assert areas.valid_m2 == pytest.approx(valid)
    assert by_name["river"].share == pytest.approx(400 * 200 * 0.09 / valid)
    assert sum(c.share for c in areas.classes) == pytest.approx(1.0)


def test_foot_crs_areas_in_square_metres(tmp_path: Path) -> None:
    # NAD83 / California zone 5 (US survey feet): 1 ft pixels are 0.0929 m2.
    data = np.zeros((50, 40), np.uint8)
    path = write_classes(tmp_path / "c.tif", data, "EPSG:2229", from_origin(6.4e6, 1.8e6, 1, 1))
    assert raster_areas(path, NAMES).valid_m2 == pytest.approx(2000 * 0.3048006096**2)


def test_geographic_areas_against_geod(tmp_path: Path) -> None:
    # 0.0005 degree pixels from 60 N down: each row's pixels shrink towards the pole.
    height, width, size = 700, 900, 0.0005
    transform = from_origin(10.0, 60.0, size, size)
    data = classes_map(height, width)
    path = write_classes(tmp_path / "c.tif", data, "EPSG:4326", transform)
    areas = raster_areas(path, NAMES)
    assert areas.method == "geodesic"
    geod = pyproj.Geod(ellps="WGS84")

    def geodesic(rows: slice, cols: slice) -> float:
        x0, x1 = 10.0 + cols.start * size, 10.0 + (cols.stop or width) * size
        y0, y1 = 60.0 - (rows.stop or height) * size, 60.0 - rows.start * size
        return abs(geod.geometry_area_perimeter(box(x0, y0, x1, y1))[0])

    # Geod's polygon edges are geodesics, not parallels: a few ppm from the per-row sum.
    by_name = {c.class_name: c for c in areas.classes}
    forest = geodesic(slice(0, 300), slice(0, 500))
    assert by_name["forest"].area_m2 == pytest.approx(forest, rel=1e-5)
    river = geodesic(slice(300, None), slice(0, 200))
    assert by_name["river"].area_m2 == pytest.approx(river, rel=1e-5)
    residential = geodesic(slice(100, 650), slice(600, None))
    assert by_name["denseresidential"].area_m2 == pytest.approx(residential, rel=1e-5)
    # A naive area at the scene's centre latitude would be off by far more than this.
    assert by_name["forest"].area_m2 != pytest.approx(
        geodesic(slice(200, 500), slice(0, 500)), rel=1e-3
    )


def test_class_areas_sum_to_the_valid_area_within_a_thousandth(tmp_path: Path) -> None:
    # Fully valid geographic scene: the per-row sums add up to the footprint's geodesic area.
    rng = np.random.default_rng(0)
    data = rng.integers(0, 3, (600, 800)).astype(np.uint8)
    path = write_classes(tmp_path / "c.tif", data, "EPSG:4326", from_origin(-5.0, 45.0, 1e-4, 1e-4))
    areas = raster_areas(path, NAMES)
    footprint = abs(pyproj.Geod(ellps="WGS84").geometry_area_perimeter(
        box(-5.0, 45.0 - 600e-4, -5.0 + 800e-4, 45.0))[0])  # fmt: skip
    total = sum(c.area_m2 for c in areas.classes)
    assert total == pytest.approx(footprint, rel=1e-3)
    assert total == pytest.approx(areas.valid_m2, rel=1e-9)


def test_no_crs_counts_pixels_and_csv(tmp_path: Path) -> None:
    path = write_classes(tmp_path / "c.tif", classes_map(), None, from_origin(0, 0, 1, 1))
    areas = raster_areas(path, NAMES)
    assert areas.method == "pixels"
    assert areas.valid_m2 is None
    valid = 300 * 500 + 400 * 200 + 550 * 300
    assert areas.share("forest") == pytest.approx(300 * 500 / valid)
    summary = areas.to_dict()
    assert summary["classes"]["forest"] == {
        "class_id": 0, "pixels": 150000, "m2": None, "ha": None,
        "share": round(150000 / valid, 6),
    }  # fmt: skip
    csv_path = tmp_path / "areas.csv"
    write_areas_csv(csv_path, areas)
    rows = list(csv.DictReader(csv_path.open()))
    assert [r["class_name"] for r in rows] == NAMES
    assert rows[0]["area_m2"] == "" and rows[0]["pixels"] == "150000"


def test_csv_values(tmp_path: Path) -> None:
    path = write_classes(
        tmp_path / "c.tif", classes_map(), "EPSG:32633", from_origin(5e5, 5e6, 0.3, 0.3)
    )
    csv_path = tmp_path / "areas.csv"
    write_areas_csv(csv_path, raster_areas(path, NAMES))
    rows = list(csv.DictReader(csv_path.open()))
    assert list(rows[0]) == ["class_id", "class_name", "pixels", "area_m2", "area_ha", "share"]
    assert float(rows[0]["area_m2"]) == pytest.approx(13500.0)
    assert float(rows[0]["area_ha"]) == pytest.approx(1.35)
    assert sum(float(r["share"]) for r in rows) == pytest.approx(1.0, abs=1e-5)
