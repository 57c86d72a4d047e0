"""Opening and checking scenes, choosing bands, reading tiles with their nodata."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.enums import ColorInterp
from rasterio.windows import Window

from mscn_geo.errors import InputError, OptionError
from mscn_geo.reader import TileReader, open_scene, parse_bands
from mscn_geo.tiling import Tile

RGB = ["red", "green", "blue"]


def test_missing_directory_and_not_a_raster(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="scene not found"):
        open_scene(tmp_path / "nope.tif", RGB)
    with pytest.raises(InputError, match="is a directory"):
        open_scene(tmp_path, RGB)
    text = tmp_path / "notes.tif"
    text.write_text("this is not a GeoTIFF\n")
    with pytest.raises(InputError, match="not a readable raster"):
        open_scene(text, RGB)


def test_truncated_file_is_an_input_error(make_scene, tmp_path: Path) -> None:
    good = make_scene(128, 128, tiled=False)
    broken = tmp_path / "broken.tif"
    broken.write_bytes(good.read_bytes()[:2000])
    with pytest.raises(InputError):
        info = open_scene(broken, RGB)
        with TileReader(info, 64) as reader:  # or fails on the first tile read
            reader.read(Tile(0, 0, Window(0, 0, 64, 64), False))


def test_no_crs(make_scene) -> None:
    with pytest.raises(InputError, match="has no CRS"):
        open_scene(make_scene(64, 64, crs=None), RGB)


def test_uint16_is_scaled_not_refused(make_scene) -> None:
    # Issue 5 replaced the old refusal; details in tests/test_robust_rasters.py.
    info = open_scene(make_scene(64, 64, dtype="uint16"), RGB)
    assert info.scaling is not None and info.scaling.method == "percentile"


def test_band_choice(make_scene) -> None:
    assert open_scene(make_scene(64, 64), RGB).band_indexes == [1, 2, 3]
    assert open_scene(make_scene(64, 64), RGB, [3, 2, 1]).band_indexes == [3, 2, 1]
    with pytest.raises(InputError, match="1 band"):
        open_scene(make_scene(64, 64, name="gray.tif", bands=1), RGB)
    with pytest.raises(OptionError, match="needs 3"):
        open_scene(make_scene(64, 64), RGB, [1, 2])
    with pytest.raises(OptionError, match="out of range"):
        open_scene(make_scene(64, 64), RGB, [1, 2, 5])


def test_four_bands_by_colour_interpretation(make_scene) -> None:
    path = make_scene(64, 64, bands=4)
    with rasterio.open(path, "r+") as ds:
        ds.colorinterp = [
            ColorInterp.blue,
            ColorInterp.green,
            ColorInterp.red,
            ColorInterp.undefined,
        ]
    info = open_scene(path, RGB)
    assert info.band_indexes == [3, 2, 1]
    assert info.warnings == []


def test_four_bands_unknown_interpretation_takes_first_three_with_warning(make_scene) -> None:
    path = make_scene(64, 64, bands=4)
    with rasterio.open(path, "r+") as ds:
        ds.colorinterp = [ColorInterp.gray] + [ColorInterp.undefined] * 3
    info = open_scene(path, RGB)
    assert info.band_indexes == [1, 2, 3]
    assert info.warnings[0].endswith("(choose others with bands=LIST)")


def test_parse_bands() -> None:
    assert parse_bands("1, 2,3") == [1, 2, 3]
    assert parse_bands(None) is None
    with pytest.raises(OptionError):
        parse_bands("red,green")


def test_nodata_value_fraction_and_skip(make_scene) -> None:
    info = open_scene(make_scene(128, 64, nodata_cols=80), RGB)
    assert info.nodata_from_value
    with TileReader(info, 64) as reader:
        empty = reader.read(Tile(0, 0, Window(0, 0, 64, 64), False))
        assert empty.pixels is None and empty.nodata_fraction == 1.0
        part = reader.read(Tile(0, 1, Window(64, 0, 64, 64), False))
        assert part.nodata_fraction == pytest.approx(16 / 64)
        assert part.valid is not None and part.pixels is not None
        assert not part.valid[:, :16].any() and part.valid[:, 16:].all()
        assert part.pixels.shape == (3, 64, 64) and part.pixels.dtype == np.uint8


def test_internal_mask_and_alpha_band(make_scene, tmp_path: Path) -> None:
    masked = make_scene(64, 64, nodata=None, name="masked.tif")
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(masked, "r+") as ds:
        mask = np.full((64, 64), 255, dtype=np.uint8)
        mask[:, :32] = 0
        ds.write_mask(mask)
    alpha = make_scene(64, 64, nodata=None, bands=4, name="alpha.tif")
    with rasterio.open(alpha, "r+") as ds:
        ds.colorinterp = [ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.alpha]
        band = np.full((64, 64), 255, dtype=np.uint8)
        band[:48] = 0
        ds.write(band, 4)
    for path, fraction in ((masked, 0.5), (alpha, 0.75)):
        info = open_scene(path, RGB)
        assert info.band_indexes == [1, 2, 3]
        with TileReader(info, 64) as reader:
            tile = reader.read(Tile(0, 0, Window(0, 0, 64, 64), False))
        assert tile.nodata_fraction == pytest.approx(fraction), path.name


def test_padded_tile_is_zero_and_invalid_outside(make_scene) -> None:
    info = open_scene(make_scene(40, 50), RGB)
    with TileReader(info, 64) as reader:
        tile = reader.read(Tile(0, 0, Window(0, 0, 40, 50), True))
    assert tile.pixels is not None and tile.valid is not None
    assert tile.pixels.shape == (3, 64, 64)
    assert tile.valid[:50, :40].all() and not tile.valid[50:].any() and not tile.valid[:, 40:].any()
    assert tile.nodata_fraction == 0.0


@pytest.mark.parametrize("kind", ["nodata_value", "internal_mask", "uint16"])
@pytest.mark.parametrize("stride", [64, 32, 16])
def test_runs_read_what_each_window_holds(make_scene, kind: str, stride: int) -> None:
    """Tiles read in runs (one window per row run, or a shared buffer for scattered
    tiles) equal each window read on its own: pixels, validity, nodata share, skips."""
    from mscn_geo.models import ModelMeta
    from mscn_geo.options import ClassifyOptions
    from mscn_geo.pipeline import read_ahead
    from mscn_geo.plan import plan_scene

    nodata = None if kind == "internal_mask" else 0
    dtype = "uint16" if kind == "uint16" else "uint8"
    path = make_scene(460, 200, nodata=nodata, nodata_cols=70, dtype=dtype)
    invalid = np.zeros((200, 460), dtype=bool)
    invalid[:, :70] = True
    invalid[100:120, 300:330] = True  # a hole inside a run of tiles
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(path, "r+") as ds:
        data = ds.read()
        data[:, invalid] = 0
        ds.write(data)
        if nodata is None:
            ds.write_mask(np.where(invalid, 0, 255).astype(np.uint8))
    meta = ModelMeta(class_names=["a", "b"], tile_size=64)
    plan = plan_scene(path, meta, ClassifyOptions(stride=stride))
    tiles = plan.grid.tiles()
    scattered = tiles[::3]  # not neighbours: the shared-buffer path
    with rasterio.open(path) as ds:
        raw = ds.read()
    assert (plan.info.scaling is not None) == (dtype == "uint16")
    with TileReader(plan.info, 64) as reader:
        for subset in (tiles, scattered):
            for workers in (0, 2):
                got = list(read_ahead(reader, subset, workers, depth=32))
                assert [g.tile for g in got] == subset
                for item in got:
                    w = item.tile.window
                    rows = slice(w.row_off, w.row_off + w.height)
                    cols = slice(w.col_off, w.col_off + w.width)
                    want_valid = ~invalid[rows, cols]
                    fraction = 1.0 - want_valid.mean()
                    assert item.nodata_fraction == pytest.approx(fraction, abs=1e-9)
                    if not want_valid.any():
                        assert item.pixels is None
                        continue
                    assert item.valid is not None and item.pixels is not None
                    np.testing.assert_array_equal(item.valid, want_valid)
                    assert item.pixels.dtype == np.uint8
                    window = raw[:, rows, cols]
                    if plan.info.scaling is not None:  # uint16: the scene's stretch to 0..255
                        window = plan.info.scaling.apply(window)
                    np.testing.assert_array_equal(item.pixels[:, want_valid], window[:, want_valid])
