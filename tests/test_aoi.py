"""Area of interest: read in any CRS, reprojected, and refused with one clear error."""

from __future__ import annotations

import re
from pathlib import Path

import geopandas
import numpy as np
import pytest
import shapely
from affine import Affine
from rasterio.transform import from_origin
from rasterio.windows import Window
from shapely.geometry import Point, box

from mscn_geo.aoi import read_aoi
from mscn_geo.errors import AoiError, MscnGeoError
from mscn_geo.landuse import scene_footprint

TRANSFORM = from_origin(500_000.0, 5_000_000.0, 0.5, 0.5)  # UTM 33N, 0.5 m
FOOTPRINT = scene_footprint(TRANSFORM, 400, 300)  # 200 m x 150 m


def utm_box_in_wgs84(path: Path, x0: float, y0: float, x1: float, y1: float) -> Path:
    frame = geopandas.GeoDataFrame(geometry=[box(x0, y0, x1, y1)], crs="EPSG:32633")
    frame.to_crs("EPSG:4326").to_file(path)
    return path


@pytest.mark.parametrize("suffix", [".geojson", ".gpkg", ".shp"])
def test_aoi_in_another_crs_is_reprojected(tmp_path: Path, suffix: str) -> None:
    path = utm_box_in_wgs84(tmp_path / f"aoi{suffix}", 500_050, 4_999_900, 500_150, 5_000_050)
    aoi = read_aoi(path, "EPSG:32633", FOOTPRINT)
    assert aoi.source_crs == "EPSG:4326"
    # Cut to the scene: x 50..150 m, y from 100 m below the top to the top edge.
    expected = box(500_050, 4_999_900, 500_150, 5_000_000)
    assert shapely.symmetric_difference(aoi.geometry, expected).area < 1e-3 * expected.area
    mask = aoi.mask(TRANSFORM, (300, 400))
    assert mask[:200, 100:300].all()
    assert mask.sum() == pytest.approx(200 * 200, rel=0.01)
    windows = [Window(0, 0, 64, 64), Window(200, 100, 64, 64), Window(300, 250, 64, 50)]
    assert aoi.intersects_windows(TRANSFORM, windows).tolist() == [False, True, False]


def test_cells_touching_the_aoi(tmp_path: Path) -> None:
    frame = geopandas.GeoDataFrame(geometry=[Point(500_100, 4_999_900).buffer(10)], crs=32633)
    frame.to_file(tmp_path / "aoi.gpkg")
    aoi = read_aoi(tmp_path / "aoi.gpkg", "EPSG:32633", FOOTPRINT)
    cells = TRANSFORM @ Affine.scale(64)  # 32 m cells
    touched = aoi.mask(cells, (5, 7), all_touched=True)
    centres = aoi.mask(cells, (5, 7))
    assert np.argwhere(touched).tolist() == [[2, 2], [2, 3], [3, 2], [3, 3]]
    assert not centres.any()


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: d / "missing.geojson", "no such file"),
        (lambda d: write(d / "bad.geojson", "{not json"), "cannot be read as a vector file"),
        (lambda d: write(d / "aoi.gpkg", "SQLite format 3\0garbage"), "cannot be read"),
        (
            lambda d: (
                geopandas.GeoDataFrame(geometry=[box(0, 0, 1, 1)]).to_file(d / "a.shp")
                or d / "a.shp"
            ),
            "has no CRS",
        ),
        (
            lambda d: (
                geopandas.GeoDataFrame(geometry=[Point(10, 50)], crs=4326).to_file(d / "p.geojson")
                or d / "p.geojson"
            ),
            "holds no polygon (Point)",
        ),
        (
            lambda d: utm_box_in_wgs84(d / "far.geojson", 600_000, 4_000_000, 600_100, 4_000_100),
            "does not overlap the scene",
        ),
    ],
    ids=["missing", "not-json", "corrupt-gpkg", "no-crs", "points", "elsewhere"],
)
def test_bad_aoi_is_one_clear_error(tmp_path: Path, make: object, message: str) -> None:
    path = make(tmp_path)  # type: ignore[operator]
    with pytest.raises(AoiError, match=re.escape(message)) as caught:
        read_aoi(path, "EPSG:32633", FOOTPRINT)
    assert isinstance(caught.value, MscnGeoError) and caught.value.exit_code == 2
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


def test_scene_without_crs_is_refused(tmp_path: Path) -> None:
    path = utm_box_in_wgs84(tmp_path / "aoi.geojson", 500_050, 4_999_900, 500_150, 5_000_050)
    with pytest.raises(AoiError, match="scene has no CRS"):
        read_aoi(path, None, FOOTPRINT)


# Reader threads test tiles against one shared AOI; GEOS prepared geometries are not
# thread-safe, and without a lock this crashed the process (segfault) in every run.
THREADED_AOI = """
import numpy as np, shapely, affine
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from rasterio.windows import Window
from mscn_geo.aoi import Aoi
t = np.linspace(0, 2 * np.pi, 2000)
r = 400 + 80 * np.sin(9 * t)
geom = shapely.Polygon(np.c_[500 + r * np.cos(t), -500 + r * np.sin(t)])
transform = affine.Affine(1, 0, 0, 0, -1, 0)
windows = [Window(c, y, 16, 16) for y in range(0, 1000, 16) for c in range(0, 1000, 16)]
want = Aoi(Path("a"), geom, "").intersects_windows(transform, windows)
for _ in range(6):
    aoi = Aoi(Path("a"), shapely.Polygon(geom), "")
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda w: aoi.intersects_window(transform, w), windows))
    assert (np.array(got) == want).all()
print(int(want.sum()), len(windows))
"""


def test_tiles_tested_against_one_aoi_from_many_threads():
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", THREADED_AOI], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-500:]
    inside, total = map(int, proc.stdout.split())
    assert total == 63 * 63 and 0 < inside < total
