"""Issue 5: real-world rasters (dtypes, masks, bands, CRSs, small scenes, pixel sizes, formats)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.enums import ColorInterp
from rasterio.transform import from_origin
from rasterio.windows import Window

from mscn_geo import scaling
from mscn_geo.errors import InputError, OptionError
from mscn_geo.options import ClassifyOptions
from mscn_geo.plan import plan_scene
from mscn_geo.reader import TileReader, open_scene
from mscn_geo.tiling import Tile

from .conftest import TINY_CLASSES, classify_and_read

RGB = ["red", "green", "blue"]
P = [f"p_{c}" for c in TINY_CLASSES]


def classify(scene: Path, model, out: Path, **options):
    return classify_and_read(scene, model, out, workers=0, **options)


def write(path: Path, data: np.ndarray, **profile) -> Path:
    base = {
        "driver": "GTiff",
        "count": data.shape[0],
        "height": data.shape[1],
        "width": data.shape[2],
        "dtype": data.dtype.name,
        "crs": "EPSG:32633",
        "transform": from_origin(500_000.0, 5_000_000.0, 0.5, 0.5),
    }
    base.update(profile)
    with rasterio.open(path, "w", **base) as dst:
        dst.write(data)
    return path


def pattern(width: int, height: int, bands: int = 3, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = ((x // 64) * 3 + (y // 64) * 5) % 7 * 30 + 20
    data = np.stack([base + 30 * b for b in range(bands)]) + rng.integers(0, 20, (bands, 1, 1))
    return np.clip(data + rng.integers(0, 20, data.shape), 1, 255).astype(np.uint8)


# --- data types -------------------------------------------------------------------------


def test_uint16_with_fixed_scale_equals_the_8bit_scene(tiny_model, tmp_path: Path) -> None:
    data = pattern(130, 70)
    eight = write(tmp_path / "eight.tif", data)
    twelve = write(tmp_path / "twelve.tif", data.astype(np.uint16) * 16)
    _, f8, r8, _ = classify(eight, tiny_model, tmp_path / "o8")
    result, f12, r12, _ = classify(twelve, tiny_model, tmp_path / "o12", scale="0,4080")
    np.testing.assert_array_equal(r8, r12)
    np.testing.assert_array_equal(f8[P].to_numpy(), f12[P].to_numpy())
    assert result.classified == 6


@pytest.mark.parametrize("dtype", ["uint16", "int16", "float32"])
def test_default_percentile_stretch(dtype: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    offset = {"uint16": 1000, "int16": -2000, "float32": 0.0}[dtype]
    span = 0.4 if dtype == "float32" else 3000
    data = (rng.random((3, 80, 96)) * span * np.array([1, 2, 3]).reshape(3, 1, 1) + offset).astype(
        dtype
    )
    path = write(tmp_path / f"{dtype}.tif", data)
    info = open_scene(path, RGB)
    assert info.scaling is not None and info.scaling.method == "percentile"
    for band in range(3):
        low, high = np.percentile(data[band].astype(np.float64), [2, 98])
        assert info.scaling.low[band] == pytest.approx(low)
        assert info.scaling.high[band] == pytest.approx(high)
    assert open_scene(path, RGB).scaling == info.scaling  # deterministic
    with TileReader(info, 64) as reader:
        tile = reader.read(Tile(0, 0, Window(0, 0, 64, 64), False))
    assert tile.pixels is not None and tile.pixels.dtype == np.uint8
    expected = info.scaling.apply(data[:, :64, :64])
    np.testing.assert_array_equal(tile.pixels, expected)
    # The stretch sends ~2% of the values to 0 and ~2% to 255.
    assert 0.005 < (expected == 0).mean() < 0.05 and 0.005 < (expected == 255).mean() < 0.05


def test_float_nan_is_nodata(tiny_model, tmp_path: Path) -> None:
    data = pattern(128, 64).astype(np.float32) / 255.0
    data[:, :, :64] = np.nan  # the left tile is all NaN
    data[0, 10:20, 70:80] = np.nan  # one band NaN is enough
    path = write(tmp_path / "refl.tif", data, nodata=np.nan)
    nonan = write(tmp_path / "refl_nonodata.tif", data)  # NaN without a nodata value
    for scene in (path, nonan):
        info = open_scene(scene, RGB)
        assert all(np.isfinite(info.scaling.low)) and all(np.isfinite(info.scaling.high))
        with TileReader(info, 64) as reader:
            left = reader.read(Tile(0, 0, Window(0, 0, 64, 64), False))
            right = reader.read(Tile(0, 1, Window(64, 0, 64, 64), False))
        assert left.pixels is None and left.nodata_fraction == 1.0
        assert right.valid is not None and not right.valid[10:20, 6:16].any()
        assert right.nodata_fraction == pytest.approx(100 / 64**2)
    result, frame, raster, _ = classify(path, tiny_model, tmp_path / "o")
    assert result.classified == 1 and list(frame["col"]) == [1]
    assert (raster[:, :64] == 255).all()


def test_scale_option_is_checked() -> None:
    assert scaling.parse_scale("0, 4095") == (0.0, 4095.0)
    for bad in ("5", "a,b", "10,2", "1,2,3", "nan,1"):
        with pytest.raises(OptionError, match=r"^scale (must be MIN,MAX|MIN,MAX needs MIN < MAX)"):
            scaling.parse_scale(bad)


def test_large_scene_without_overviews_is_sampled_not_read_whole(monkeypatch, tmp_path) -> None:
    data = (pattern(300, 260).astype(np.uint16) + 7) * 3
    path = write(tmp_path / "big.tif", data, tiled=True, blockxsize=64, blockysize=64)
    monkeypatch.setattr(scaling, "_OVERVIEW_SIDE", 100)  # "huge" for this test
    read_windows: list[object] = []
    original = rasterio.io.DatasetReader.read

    def spy(self, *args, **kwargs):
        read_windows.append(kwargs.get("window"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(rasterio.io.DatasetReader, "read", spy)
    info = open_scene(path, RGB)
    sampled = [w for w in read_windows if w is not None and w.width > 1]
    assert len(sampled) == scaling._SAMPLE_GRID**2
    assert all(w.width == scaling._SAMPLE_WINDOW for w in sampled)
    assert info.scaling is not None and info.scaling.low[0] < info.scaling.high[0]


def test_overviews_are_used_for_the_estimate(monkeypatch, tmp_path) -> None:
    data = (pattern(300, 260).astype(np.uint16) + 7) * 3
    path = write(tmp_path / "ovr.tif", data, tiled=True, blockxsize=64, blockysize=64)
    with rasterio.open(path, "r+") as ds:
        ds.build_overviews([2, 4])
    monkeypatch.setattr(scaling, "_OVERVIEW_SIDE", 100)
    info = open_scene(path, RGB)
    assert info.scaling is not None and info.scaling.high[2] > info.scaling.low[2]


# --- masks ------------------------------------------------------------------------------


def _masked_pair(tmp_path: Path, kind: str) -> tuple[Path, Path]:
    """Two scenes equal where valid; under the mask one has wild values, the other zeros."""
    paths = []
    for name, wild in (("calm", False), ("wild", True)):
        data = pattern(128, 64, bands=4 if kind == "alpha" else 3)
        if wild:
            data[:3, :, 32:] = np.random.default_rng(9).integers(0, 256, (3, 64, 96))
            data[:3, :, 100:] = 255
        else:
            data[:3, :, 32:] = 0
        path = tmp_path / f"{kind}_{name}.tif"
        if kind == "alpha":
            data[3] = 255
            data[3, :, 32:] = 0
            write(path, data, photometric="RGB", alpha="YES")
            with rasterio.open(path, "r+") as ds:
                ds.colorinterp = [
                    ColorInterp.red,
                    ColorInterp.green,
                    ColorInterp.blue,
                    ColorInterp.alpha,
                ]
        else:
            write(path, data)
            mask = np.full((64, 128), 255, np.uint8)
            mask[:, 32:] = 0
            if kind == "internal":
                with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(path, "r+") as ds:
                    ds.write_mask(mask)
            else:  # sidecar .msk
                with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=False), rasterio.open(path, "r+") as ds:
                    ds.write_mask(mask)
                assert path.with_name(path.name + ".msk").exists()
        paths.append(path)
    return paths[0], paths[1]


@pytest.mark.parametrize("kind", ["internal", "sidecar", "alpha"])
def test_masked_pixels_never_decide_a_class(kind, tiny_model, tmp_path: Path) -> None:
    calm, wild = _masked_pair(tmp_path, kind)
    r1, f1, ras1, _ = classify(calm, tiny_model, tmp_path / "o1")
    r2, f2, ras2, _ = classify(wild, tiny_model, tmp_path / "o2")
    # Tile 0 is half masked (columns 32..63); tile 1 (64..127) is entirely masked.
    assert r1.classified == r2.classified == 1 and r1.skipped == 1
    assert f1["nodata_fraction"].tolist() == pytest.approx([0.5])
    np.testing.assert_array_equal(f1[P].to_numpy(), f2[P].to_numpy())
    np.testing.assert_array_equal(ras1, ras2)
    assert (ras1[:, 64:] == 255).all()


# --- bands ------------------------------------------------------------------------------


def test_four_band_rgbn_and_bands_option(tiny_model, tmp_path: Path) -> None:
    rgb = pattern(64, 64)
    nir = np.full((1, 64, 64), 200, np.uint8)
    rgbn = write(tmp_path / "rgbn.tif", np.concatenate([rgb, nir]))
    nrgb = write(tmp_path / "nrgb.tif", np.concatenate([nir, rgb]))
    with rasterio.open(rgbn, "r+") as ds:
        ds.colorinterp = [
            ColorInterp.red,
            ColorInterp.green,
            ColorInterp.blue,
            ColorInterp.undefined,
        ]
    plain = write(tmp_path / "rgb.tif", rgb)
    _, ref, _, _ = classify(plain, tiny_model, tmp_path / "o0")
    _, by_colour, _, _ = classify(rgbn, tiny_model, tmp_path / "o1")
    _, by_option, _, _ = classify(nrgb, tiny_model, tmp_path / "o2", bands="2,3,4")
    for frame in (by_colour, by_option):
        np.testing.assert_array_equal(frame[P].to_numpy(), ref[P].to_numpy())


def test_one_band_needs_bands_option(tiny_model, tmp_path: Path) -> None:
    gray = write(tmp_path / "gray.tif", pattern(64, 64)[:1])
    with pytest.raises(InputError) as err:
        open_scene(gray, RGB)
    assert str(err.value) == (
        "scene has 1 band(s) and the model needs 3 (red, green, blue); "
        "pass bands=1,1,1 to repeat it"
    )
    result, frame, _, _ = classify(gray, tiny_model, tmp_path / "o", bands="1,1,1")
    assert result.bands == [1, 1, 1] and len(frame) == 1


# --- geometry ---------------------------------------------------------------------------


def _corners(transform: Affine, col: float, row: float, w: float, h: float) -> set:
    pts = [(col, row), (col + w, row), (col + w, row + h), (col, row + h)]
    return {tuple(np.round(transform * p, 9)) for p in pts}


@pytest.mark.parametrize(
    ("crs", "transform"),
    [
        ("EPSG:4326", from_origin(10.0, 50.0, 0.000005, 0.000005)),
        ("EPSG:32633", Affine(0.4, 0.15, 500_000.0, 0.1, -0.45, 5_000_000.0)),  # rotated+sheared
    ],
)
def test_footprints_are_true_tile_corners(crs, transform, tiny_model, tmp_path: Path) -> None:
    path = write(tmp_path / "s.tif", pattern(100, 70), crs=crs, transform=transform)
    _result, frame, _, profile = classify(path, tiny_model, tmp_path / "o")
    out_crs = profile["crs"]
    assert frame.crs.to_string() == crs and out_crs.to_string() == crs
    assert len(frame) == 4
    for rec in frame.itertuples():
        col = [0, 36][rec.col]
        row = [0, 6][rec.row]
        ring = {tuple(np.round(p, 9)) for p in list(rec.geometry.exterior.coords)[:-1]}
        assert ring == _corners(transform, col, row, 64, 64)


def test_no_crs_error_or_pixel_space(tiny_model, tmp_path: Path) -> None:
    path = write(tmp_path / "nocrs.tif", pattern(100, 64), crs=None, transform=Affine.identity())
    with pytest.raises(InputError, match="has no CRS"):
        plan_scene(path, tiny_model.meta, ClassifyOptions())
    result, frame, raster, profile = classify(path, tiny_model, tmp_path / "o", allow_no_crs=True)
    crs = profile["crs"]
    assert crs is None and frame.crs is None and raster.shape == (64, 100)
    assert result.crs == "none"
    assert result.warnings == [
        "scene has no CRS: outputs have none either; their coordinates are pixel coordinates "
        "(x = column, y = row, from the top left corner)"
    ]
    bounds = sorted(tuple(g.bounds) for g in frame.geometry)
    assert bounds == [(0.0, 0.0, 64.0, 64.0), (36.0, 0.0, 100.0, 64.0)]
    # A geotransform without CRS: outputs keep its coordinates (not pixel ones), and say so.
    placed = write(
        tmp_path / "placed.tif", pattern(100, 64), crs=None, transform=from_origin(1000, 2000, 2, 2)
    )
    result, frame, _, profile = classify(placed, tiny_model, tmp_path / "p", allow_no_crs=True)
    assert profile["crs"] is None and profile["transform"] == from_origin(1000, 2000, 2, 2)
    assert result.warnings == [
        "scene has no CRS: outputs have none either; their coordinates are the scene's "
        "geotransform coordinates (whatever units they are in)"
    ]
    bounds = sorted(tuple(g.bounds) for g in frame.geometry)
    assert bounds == [(1000.0, 1872.0, 1128.0, 2000.0), (1072.0, 1872.0, 1200.0, 2000.0)]


def test_scene_smaller_than_a_tile(tiny_model, tmp_path: Path) -> None:
    path = write(tmp_path / "small.tif", pattern(40, 30))
    result, frame, raster, _ = classify(path, tiny_model, tmp_path / "o")
    assert result.tiles == 1 and result.padded == 1 and frame["padded"].tolist() == [True]
    assert any("smaller than one 64 px tile" in w for w in result.warnings)
    assert frame.geometry[0].bounds == pytest.approx((500_000.0, 4_999_985.0, 500_020.0, 5e6))
    assert (raster == frame["class_id"][0]).all()
    with pytest.raises(OptionError) as err:
        classify(path, tiny_model, tmp_path / "o2", pad=False)
    assert "tile size 64 px is larger than the scene (40x30 px) with padding off" in str(err.value)
    assert not (tmp_path / "o2").exists() or not list((tmp_path / "o2").iterdir())


def test_pixel_size_warning_and_resample(tiny_model, tmp_path: Path) -> None:
    # 0.125 m pixels, the model's are 0.5 m: a model tile covers 256 scene pixels.
    path = write(
        tmp_path / "fine.tif", pattern(300, 260), transform=from_origin(500_000, 5e6, 0.125, 0.125)
    )
    plan = plan_scene(path, tiny_model.meta, ClassifyOptions())
    assert plan.warnings == [
        "pixel size 0.125 m is 0.25x the model's 0.5 m: classes may be unreliable; "
        "pass resample=True to read tiles at the model's pixel size "
        "(256 px windows resampled to 64 px)"
    ]
    result, frame, raster, _ = classify(path, tiny_model, tmp_path / "o", resample=True)
    assert not any("pixel size" in w for w in result.warnings)
    assert result.tiles == 4 and len(frame) == 4
    for rec in frame.itertuples():  # footprints stay the true 256 px windows (32 m)
        x0, y0, x1, y1 = rec.geometry.bounds
        assert (x1 - x0, y1 - y0) == pytest.approx((32.0, 32.0))
    assert raster.shape == (260, 300)
    info = plan_scene(path, tiny_model.meta, ClassifyOptions(resample=True)).info
    with TileReader(info, 256) as reader:
        tile = reader.read(Tile(0, 0, Window(0, 0, 256, 256), False))
    assert tile.pixels is not None and tile.pixels.shape == (3, 64, 64)


@pytest.mark.parametrize("size", [0.05, 0.125, 0.3, 1.0, 1.6, 4.0, 20.0, 300.0])
def test_pixel_size_advice_is_advice_that_works(size, tiny_model, tmp_path: Path) -> None:
    """Where the warning says pass resample=True, resampling works; elsewhere it says why not."""
    path = write(tmp_path / "s.tif", pattern(64, 64), transform=from_origin(5e5, 5e6, size, size))
    warnings = [
        w
        for w in plan_scene(path, tiny_model.meta, ClassifyOptions()).warnings
        if "pixel size" in w
    ]
    window = round(64 * 0.5 / size)  # scene pixels under one 64 px model tile of 0.5 m
    if 0.25 <= size <= 1.0:
        assert warnings == []
    elif window >= 32:
        assert len(warnings) == 1 and "pass resample=True" in warnings[0]
        plan = plan_scene(path, tiny_model.meta, ClassifyOptions(resample=True))
        assert plan.grid.tile == window and plan.info.read_tile == 64
    else:
        assert len(warnings) == 1 and "resample" not in warnings[0]
        assert f"this model does not fit {size:g} m imagery" in warnings[0]
        assert "a model trained on chips of about" in warnings[0]
        with pytest.raises(OptionError, match="resample=True cannot help: this model does not fit"):
            plan_scene(path, tiny_model.meta, ClassifyOptions(resample=True))


def test_geographic_pixel_size_is_estimated(tiny_model, tmp_path: Path) -> None:
    # 0.00005 deg at 50 N is about 5.5 m x 3.6 m: far from 0.5 m.
    path = write(
        tmp_path / "geo.tif",
        pattern(64, 64),
        crs="EPSG:4326",
        transform=from_origin(10.0, 50.0, 0.00005, 0.00005),
    )
    plan = plan_scene(path, tiny_model.meta, ClassifyOptions())
    assert plan.pixel_size_m == pytest.approx(
        0.00005 * 110_574 * np.sqrt(np.cos(np.radians(50))), rel=1e-3
    )
    assert any("this model does not fit 4.43 m imagery" in w for w in plan.warnings)


# --- formats ----------------------------------------------------------------------------


def _formats(tmp_path: Path, data: np.ndarray) -> dict[str, Path]:
    h, w = data.shape[1:]
    out = {
        "striped": write(tmp_path / "striped.tif", data, tiled=False, blockysize=8),
        "bigtiff": write(tmp_path / "big.tif", data, BIGTIFF="YES", tiled=True),
        "jpeg": write(
            tmp_path / "jpeg.tif", data, compress="JPEG", tiled=True, blockxsize=64, blockysize=64
        ),
    }
    cog = tmp_path / "cog.tif"
    write(cog, data, driver="COG", overview_resampling="average", blocksize=128)
    with rasterio.open(cog) as ds:
        assert ds.overviews(1), "COG without overviews"
    out["cog"] = cog
    left = write(tmp_path / "left.tif", data[:, :, : w // 2])
    right = write(
        tmp_path / "right.tif",
        data[:, :, w // 2 :],
        transform=from_origin(500_000.0 + 0.5 * (w // 2), 5_000_000.0, 0.5, 0.5),
    )
    bands = "".join(
        f"""<VRTRasterBand dataType="Byte" band="{b}">"""
        + "".join(
            f"""<SimpleSource><SourceFilename relativeToVRT="1">{src.name}</SourceFilename>
            <SourceBand>{b}</SourceBand><SrcRect xOff="0" yOff="0" xSize="{sw}" ySize="{h}"/>
            <DstRect xOff="{x}" yOff="0" xSize="{sw}" ySize="{h}"/></SimpleSource>"""
            for src, x, sw in ((left, 0, w // 2), (right, w // 2, w - w // 2))
        )
        + "</VRTRasterBand>"
        for b in (1, 2, 3)
    )
    with rasterio.open(left) as ds:
        srs = ds.crs.to_wkt()
    vrt = tmp_path / "mosaic.vrt"
    vrt.write_text(
        f"""<VRTDataset rasterXSize="{w}" rasterYSize="{h}"><SRS>{srs}</SRS>
        <GeoTransform>500000.0, 0.5, 0.0, 5000000.0, 0.0, -0.5</GeoTransform>{bands}</VRTDataset>"""
    )
    out["vrt"] = vrt
    return out


def test_formats_give_the_same_classes(tiny_model, tmp_path: Path) -> None:
    data = pattern(192, 128)
    ref_path = write(tmp_path / "ref.tif", data)
    _, ref, ref_raster, _ = classify(ref_path, tiny_model, tmp_path / "ref")
    formats = _formats(tmp_path, data)
    assert formats["bigtiff"].read_bytes()[:4] == b"II+\x00"
    for name, path in formats.items():
        result, frame, raster, _ = classify(path, tiny_model, tmp_path / f"o_{name}")
        assert result.classified == 6 and raster.shape == (128, 192), name
        if name == "jpeg":  # lossy: same geometry, valid probabilities
            np.testing.assert_allclose(frame[P].sum(axis=1), 1.0, atol=1e-5)
            assert frame.geometry.geom_equals(ref.geometry).all()
            continue
        np.testing.assert_array_equal(frame[P].to_numpy(), ref[P].to_numpy(), err_msg=name)
        np.testing.assert_array_equal(raster, ref_raster, err_msg=name)
