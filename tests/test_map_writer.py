"""MapWriter: class and probability rasters from tile results, read back as GeoTIFFs."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rio_cogeo.cogeo import cog_validate

from mscn_geo.map_writer import MapWriter
from mscn_geo.options import ClassifyOptions
from mscn_geo.plan import plan_scene
from mscn_geo.predict import predict_tiles
from mscn_geo.tiling import TileGrid

from .conftest import TINY_CLASSES


def _predict(scene: Path, model, stride: int | None = None):
    options = ClassifyOptions(device="cpu", batch_size=8, workers=0, stride=stride)
    plan = plan_scene(scene, model.meta, options)
    result, _, _ = predict_tiles(plan.info, plan.grid, model, options)
    return plan, result


def _write(plan, result, out: Path, *, tile_masks: bool = False, **kwargs) -> MapWriter:
    """Feed the tiles in grid order, batches of 5, re-reading masks when asked."""
    from mscn_geo.reader import TileReader

    tiles = plan.grid.tiles()
    with TileReader(plan.info, plan.grid.tile) as reader, MapWriter(
        plan.info, plan.grid, TINY_CLASSES, out, tile_masks=tile_masks, **kwargs
    ) as writer:  # fmt: skip
        for lo in range(0, len(tiles), 5):
            batch = tiles[lo : lo + 5]
            valid = [reader.read(t).valid for t in batch] if tile_masks else None
            writer.add(batch, result.probs[lo : lo + 5], valid)
    return writer


def test_stride_equal_tile_is_todays_raster(make_scene, tiny_model, tmp_path) -> None:
    for width, height in [(200, 130), (40, 50)]:  # shifted last tiles; one padded tile
        scene = make_scene(width, height, name=f"s{width}.tif")
        plan, result = _predict(scene, tiny_model)
        out = tmp_path / f"s{width}_classes.tif"
        _write(plan, result, out)
        rows, cols = plan.grid.shape
        today = plan.grid.paint(result.class_ids.reshape(rows, cols), 0, height)
        with rasterio.open(out) as ds:
            np.testing.assert_array_equal(ds.read(1), today)
        assert len(np.unique(today)) > 1 or width == 40


@pytest.mark.parametrize("tile_masks", [False, True])
def test_nodata_pixels_are_nodata_whatever_the_class(make_scene, tiny_model, tmp_path, tile_masks):
    scene = make_scene(200, 130, nodata_cols=70)  # tile column 1 is partly nodata
    plan, result = _predict(scene, tiny_model, stride=32)
    out = tmp_path / "classes.tif"
    writer = _write(plan, result, out, tile_masks=tile_masks, probabilities=tmp_path / "p.tif")
    with rasterio.open(out) as ds:
        raster = ds.read(1)
    assert (raster[:, :70] == 255).all()
    assert (raster[:, 70:] != 255).all()
    assert writer.areas.pixel_counts[255] == 70 * 130
    assert sum(writer.counts_by_name().values()) == 130 * 130
    with rasterio.open(tmp_path / "p.tif") as ds:
        probs = ds.read()
    # Cells x 0..64 are all nodata, the cell x 64..96 has valid pixels.
    assert (probs[:, :, :2] == 255).all() and (probs[:, :, 2:] <= 250).all()


def test_probabilities_raster(make_scene, tiny_model, tmp_path) -> None:
    scene = make_scene(200, 130)
    plan, result = _predict(scene, tiny_model, stride=32)
    _write(plan, result, tmp_path / "c.tif", probabilities=tmp_path / "p.tif", weighting="uniform")
    with rasterio.open(scene) as src, rasterio.open(tmp_path / "p.tif") as ds:
        assert ds.count == 3 and ds.dtypes == ("uint8",) * 3 and ds.nodata == 255
        assert ds.descriptions == tuple(TINY_CLASSES)
        assert (ds.width, ds.height) == (7, 5)  # ceil(200 / 32), ceil(130 / 32)
        assert ds.transform == src.transform @ rasterio.Affine.scale(32)
        assert ds.crs == src.crs
        probs = ds.read()
    # Cell (1, 1), pixels 32..64: inside tiles (0,0), (0,1), (1,0), (1,1), uniform mean.
    grid = TileGrid(200, 130, 64, 32)
    cols = grid.shape[1]
    mean = result.probs[[0, 1, cols, cols + 1]].mean(axis=0)
    np.testing.assert_array_equal(probs[:, 1, 1], np.rint(mean * 250).astype(np.uint8))
    # Corner cell: tile (0, 0) alone.
    np.testing.assert_array_equal(probs[:, 0, 0], np.rint(result.probs[0] * 250))
    assert np.abs(probs.astype(int).sum(axis=0) - 250).max() <= 2
    for path in ("c.tif", "p.tif"):
        valid, errors, _ = cog_validate(str(tmp_path / path))
        assert valid, errors


def test_min_confidence_uncertain_class(make_scene, tiny_model, tmp_path) -> None:
    scene = make_scene(200, 130)
    plan, result = _predict(scene, tiny_model)
    threshold = float(np.median(result.probs.max(axis=1)))
    out = tmp_path / "x_classes.tif"
    writer = _write(plan, result, out, min_confidence=threshold)
    rows, cols = plan.grid.shape
    low = (result.probs.max(axis=1) < threshold).reshape(rows, cols)
    assert low.any() and not low.all()
    expected = plan.grid.paint(np.where(low, 254, result.class_ids.reshape(rows, cols)), 0, 130)
    with rasterio.open(out) as ds:
        np.testing.assert_array_equal(ds.read(1), expected.astype(np.uint8))
        assert ds.colormap(1)[254] == (255, 0, 255, 255)
    assert writer.counts_by_name()["uncertain"] == int((expected == 254).sum())
    categories = ET.parse(str(out) + ".aux.xml").getroot().findall(".//Category")
    assert categories[254].text == "uncertain" and categories[0].text == TINY_CLASSES[0]
    qml = ET.parse(tmp_path / "x_classes.qml").getroot()
    entries = [(e.get("value"), e.get("label")) for e in qml.iter("paletteEntry")]
    assert entries[-1] == ("254", "uncertain") and len(entries) == 4
    assert cog_validate(str(out))[0]
