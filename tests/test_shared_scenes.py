"""classify on the three real scenes in ../shared/data/scenes (skipped when absent)."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely

from mscn_geo.classify import classify_scene
from mscn_geo.options import ClassifyOptions

from .conftest import SHARED, TINY_CLASSES

SCENES = SHARED / "data" / "scenes"
COLUMNS = [
    "class_id", "class_name", "confidence", "margin", "entropy", *(f"p_{n}" for n in TINY_CLASSES),
    "row", "col", "nodata_fraction", "padded", "geometry",
]  # fmt: skip

pytestmark = pytest.mark.skipif(
    not SCENES.is_dir(), reason=f"shared scenes not found at {SCENES} (../shared is optional)"
)


@pytest.mark.parametrize(
    ("name", "bands"),
    [
        ("aerial_rgb_025m.tif", [1, 2, 3]),
        ("landsat_rgb_byte.tif", [1, 2, 3]),
        ("naip_rgbn_2020.tif", [1, 2, 3]),  # R, G, B, NIR: the NIR band is left out
    ],
)
def test_real_scene(name: str, bands: list[int], tiny_model, tmp_path: Path) -> None:
    scene = SCENES / name
    if not scene.exists():
        pytest.skip(f"{scene} not found")
    options = ClassifyOptions(out_dir=tmp_path, device="cpu", tile_size=128, batch_size=16)
    result = classify_scene(scene, tiny_model, options)
    assert result.bands == bands
    frame = gpd.read_file(result.outputs["gpkg"], layer="tiles")
    assert list(frame.columns) == COLUMNS
    with rasterio.open(scene) as ds:
        crs, bounds, transform, shape = ds.crs, ds.bounds, ds.transform, ds.shape
        valid = ds.read_masks(bands).any(axis=0)
    assert frame.crs == crs
    assert len(frame) == result.classified and result.classified + result.skipped == result.tiles
    np.testing.assert_allclose(
        frame[[c for c in COLUMNS if c.startswith("p_")]].sum(axis=1), 1, atol=1e-5
    )
    with rasterio.open(result.outputs["raster"]) as ds:
        assert ds.crs == crs and ds.transform == transform and ds.shape == shape
        classes = ds.read(1)
    assert set(np.unique(classes)) <= set(range(len(TINY_CLASSES))) | {255}
    # Nodata pixels of the scene, and only those, are nodata in the map (issue 14).
    np.testing.assert_array_equal(classes == 255, ~valid)
    if name == "landsat_rgb_byte.tif":
        assert (classes == 255).sum() == 184_823
        assert result.areas["valid_pixels"] == 567_938 - 184_823
    if result.skipped == 0:
        union = shapely.union_all(frame.geometry.values)
        np.testing.assert_allclose(union.bounds, tuple(bounds))
