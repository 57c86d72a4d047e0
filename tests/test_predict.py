"""classify_scene on generated rasters: geometry, CRS, classes, probabilities, nodata."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from affine import Affine
from shapely.geometry import box

from mscn_geo.errors import OutputError
from mscn_geo.tiling import TileGrid

from .conftest import TINY_CLASSES, classify_and_read

P_COLUMNS = [f"p_{name}" for name in TINY_CLASSES]


run = classify_and_read


def check_tiles(frame: gpd.GeoDataFrame) -> None:
    assert frame["class_id"].between(0, len(TINY_CLASSES) - 1).all()
    assert list(frame["class_name"]) == [TINY_CLASSES[i] for i in frame["class_id"]]
    probs = frame[P_COLUMNS].to_numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(frame["confidence"], probs.max(axis=1), atol=1e-7)
    np.testing.assert_array_equal(frame["class_id"], probs.argmax(axis=1))


def check_raster_matches_tiles(frame, raster, width, height, tile, stride=None) -> None:
    """The pixel at the centre of each tile's owned cell has that tile's class."""
    grid = TileGrid(width, height, tile, stride or tile)
    rows, cols = grid.shape
    row_owner, col_owner = grid.row_owner(), grid.col_owner()
    for rec in frame.itertuples():
        ys = np.flatnonzero(row_owner == rec.row)
        xs = np.flatnonzero(col_owner == rec.col)
        assert raster[ys[len(ys) // 2], xs[len(xs) // 2]] == rec.class_id
    assert len(frame) <= rows * cols


def test_scene_is_tiled_exactly(make_scene, tiny_model, tmp_path: Path) -> None:
    scene = make_scene(200, 130)  # 4 x 3 tiles of 64, last column and row shifted
    result, frame, raster, profile = run(scene, tiny_model, tmp_path / "out")
    assert len(frame) == 12 and result.classified == 12 and result.skipped == 0
    assert frame.crs == rasterio.crs.CRS.from_epsg(32633)
    assert profile["crs"] == rasterio.crs.CRS.from_epsg(32633)
    with rasterio.open(scene) as ds:
        bounds, transform = ds.bounds, ds.transform
    assert profile["transform"] == transform and raster.shape == (130, 200)
    union = shapely.union_all(frame.geometry.values)
    assert union.area == pytest.approx(200 * 130 * 0.25)
    np.testing.assert_allclose(union.bounds, tuple(bounds))
    # The shifted last tile's footprint is its real pixels, x 136..200 px.
    last = frame[(frame["row"] == 2) & (frame["col"] == 3)].geometry.iloc[0]
    assert last.bounds == pytest.approx(
        (500_000 + 136 * 0.5, 5_000_000 - 65, 500_100, 4_999_967 + 0)
    )
    check_tiles(frame)
    assert len(set(frame["class_id"])) > 1  # the test model tells tiles apart
    check_raster_matches_tiles(frame, raster, 200, 130, 64)
    assert (raster != 255).all()
    assert not frame["padded"].any()
    assert (frame["nodata_fraction"] == 0).all()
    assert sum(result.per_class.values()) == 12
    summary = result.to_dict()
    assert summary["outputs"]["gpkg"].endswith("scene.gpkg")
    assert "UNTRAINED" in summary["model"]["label"]


def test_nodata_tiles_are_skipped(make_scene, tiny_model, tmp_path: Path) -> None:
    scene = make_scene(200, 130, nodata_cols=70)  # column 0 all nodata, column 1 partly
    result, frame, raster, _ = run(scene, tiny_model, tmp_path / "out")
    assert result.skipped == 3 and len(frame) == 9
    assert set(frame["col"]) == {1, 2, 3}
    col1 = frame[frame["col"] == 1]
    np.testing.assert_allclose(col1["nodata_fraction"], 6 / 64)
    assert (frame[frame["col"] > 1]["nodata_fraction"] == 0).all()
    # Nodata pixels are nodata in the raster whatever their tile's class (issue 14).
    assert (raster[:, :70] == 255).all() and (raster[:, 70:] != 255).all()
    union = shapely.union_all(frame.geometry.values)
    assert union.area == pytest.approx((200 - 64) * 130 * 0.25)
    assert union.bounds[0] == pytest.approx(500_000 + 64 * 0.5)
    check_tiles(frame)
    check_raster_matches_tiles(frame, raster, 200, 130, 64)


def test_all_nodata_scene_gives_empty_outputs_and_a_warning(make_scene, tiny_model, tmp_path):
    scene = make_scene(100, 80, nodata_cols=100)
    result, frame, raster, _ = run(scene, tiny_model, tmp_path / "out")
    assert len(frame) == 0 and result.classified == 0 and result.skipped == 4
    assert (raster == 255).all()
    assert any("entirely nodata" in w for w in result.warnings)


def test_small_scene_is_one_padded_tile(make_scene, tiny_model, tmp_path: Path) -> None:
    scene = make_scene(40, 50)
    result, frame, raster, _ = run(scene, tiny_model, tmp_path / "out")
    assert len(frame) == 1 and bool(frame["padded"].iloc[0]) and result.padded == 1
    geom = frame.geometry.iloc[0]
    assert geom.normalize().equals_exact(
        box(500_000, 4_999_975, 500_020, 5_000_000).normalize(), 1e-6
    )
    assert geom.exterior.is_ccw
    assert (raster == frame["class_id"].iloc[0]).all()
    assert any("smaller than one" in w for w in result.warnings)


def test_non_square_geographic_scene(make_scene, tiny_model, tmp_path: Path) -> None:
    scene = make_scene(70, 150, crs="EPSG:4326")
    result, frame, raster, _ = run(scene, tiny_model, tmp_path / "out")
    assert result.crs == "EPSG:4326" and frame.crs.to_epsg() == 4326
    assert len(frame) == 2 * 3
    union = shapely.union_all(frame.geometry.values)
    with rasterio.open(scene) as ds:
        np.testing.assert_allclose(union.bounds, tuple(ds.bounds))
    assert union.area == pytest.approx(70 * 150 * 1e-8)
    check_tiles(frame)
    check_raster_matches_tiles(frame, raster, 70, 150, 64)


def test_rotated_grid_footprints_follow_the_affine(make_scene, tiny_model, tmp_path):
    transform = Affine.translation(1000, 2000) @ Affine.rotation(30) @ Affine.scale(1, -1)
    scene = make_scene(128, 100, transform=transform)
    _, frame, _, _ = run(scene, tiny_model, tmp_path / "out")
    corners = [transform @ xy for xy in ((0, 0), (128, 0), (128, 100), (0, 100))]
    footprint = shapely.Polygon(corners)
    union = shapely.union_all(frame.geometry.values)
    assert union.symmetric_difference(footprint).area == pytest.approx(0, abs=1e-6)


def test_stride_overlap_and_workers_are_deterministic(make_scene, tiny_model, tmp_path):
    scene = make_scene(150, 100)
    a = run(scene, tiny_model, tmp_path / "a", stride=32, workers=0)[1]
    b = run(scene, tiny_model, tmp_path / "b", stride=32, workers=3)[1]
    assert len(a) == 4 * 3  # x: 0 32 64 86, y: 0 32 36
    np.testing.assert_array_equal(a["class_id"], b["class_id"])
    np.testing.assert_array_equal(a[P_COLUMNS].to_numpy(), b[P_COLUMNS].to_numpy())
    check_tiles(a)


def test_existing_outputs_are_refused_and_overwrite_replaces(make_scene, tiny_model, tmp_path):
    scene = make_scene(64, 64)
    out = tmp_path / "out"
    run(scene, tiny_model, out)
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(OutputError, match="exists"):
        run(scene, tiny_model, out)
    assert sorted(p.name for p in out.iterdir()) == before  # nothing partial left
    run(scene, tiny_model, out, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == before
