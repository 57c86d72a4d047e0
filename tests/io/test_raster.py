"""ClassRasterWriter: the class GeoTIFF on the scene's grid."""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.enums import ColorInterp, Compression
from rasterio.transform import from_origin
from rasterio.windows import Window

from mscn_geo.io import ClassRasterWriter, atomic_outputs, class_colours, output_paths
from mscn_geo.io.raster import overview_factors

NAMES = ["forest", "river", "denseresidential", "beach"]
COLOURS = class_colours(NAMES)


def _scene(path: Path, width: int, height: int, crs: str, transform: Affine) -> Path:
    profile = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": 3,
        "dtype": "uint8",
        "crs": crs,
        "transform": transform,
        "nodata": 0,
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(np.full((3, height, width), 7, np.uint8))
    return path


@pytest.fixture(
    params=[
        ("EPSG:32633", from_origin(500_000.0, 5_000_000.0, 0.5, 0.5)),
        ("EPSG:4326", from_origin(10.0, 50.0, 0.0001, 0.0001)),
    ],
    ids=["utm33n", "wgs84"],
)
def scene(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    crs, transform = request.param
    return _scene(tmp_path / "scene.tif", 300, 200, crs, transform)


def _classes(height: int, width: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, len(NAMES), (height, width)).astype(np.uint8)


def _write_tiles(writer: ClassRasterWriter, data: np.ndarray, tile: tuple[int, int]) -> None:
    """Write ``data`` in windows of ``tile`` (h, w) that do not line up with the 512 blocks."""
    th, tw = tile
    for row in range(0, data.shape[0], th):
        for col in range(0, data.shape[1], tw):
            window = Window(col, row, min(tw, data.shape[1] - col), min(th, data.shape[0] - row))
            writer.write(window, data[row : row + window.height, col : col + window.width])


def _write_for_scene(scene: Path, out: Path, data: np.ndarray) -> None:
    with rasterio.open(scene) as src:
        grid = {"width": src.width, "height": src.height, "crs": src.crs}
        grid["transform"] = src.transform
    with ClassRasterWriter(out, **grid, class_names=NAMES, colours=COLOURS) as writer:
        _write_tiles(writer, data, (70, 90))


def _gdal_library() -> ctypes.CDLL | None:
    """The GDAL rasterio uses (its wheel bundles one), to read what GDAL itself reports."""
    libs_dir = Path(rasterio.__file__).resolve().parent.parent / "rasterio.libs"
    candidates = sorted(glob.glob(str(libs_dir / "libgdal*.so*")))
    found = ctypes.util.find_library("gdal")
    candidates += [found] if found else []
    for candidate in candidates:
        try:
            return ctypes.CDLL(candidate)
        except OSError:
            continue
    return None


def _gdal_category_names(path: Path) -> list[str]:
    gdal = _gdal_library()
    if gdal is None:
        pytest.skip("no GDAL shared library found for ctypes")
    gdal.GDALOpen.restype = ctypes.c_void_p
    gdal.GDALOpen.argtypes = [ctypes.c_char_p, ctypes.c_int]
    gdal.GDALGetRasterBand.restype = ctypes.c_void_p
    gdal.GDALGetRasterBand.argtypes = [ctypes.c_void_p, ctypes.c_int]
    gdal.GDALGetMetadata.restype = ctypes.c_void_p
    gdal.GDALGetMetadata.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    gdal.GDALGetRasterCategoryNames.restype = ctypes.POINTER(ctypes.c_char_p)
    gdal.GDALGetRasterCategoryNames.argtypes = [ctypes.c_void_p]
    gdal.GDALClose.argtypes = [ctypes.c_void_p]
    gdal.GDALAllRegister()
    dataset = gdal.GDALOpen(os.fsencode(path), 0)
    assert dataset, f"GDAL cannot open {path}"
    try:
        band = gdal.GDALGetRasterBand(dataset, 1)
        # Like gdalinfo: reading metadata first makes GTiff load its .aux.xml.
        gdal.GDALGetMetadata(band, None)
        names = gdal.GDALGetRasterCategoryNames(band)
        result = []
        index = 0
        while names and names[index] is not None:
            result.append(names[index].decode())
            index += 1
        return result
    finally:
        gdal.GDALClose(dataset)


def test_georeferencing_matches_the_scene(scene: Path, tmp_path: Path) -> None:
    out = tmp_path / "scene_classes.tif"
    data = _classes(200, 300)
    _write_for_scene(scene, out, data)
    with rasterio.open(scene) as src, rasterio.open(out) as dst:
        assert (dst.width, dst.height) == (src.width, src.height) == (300, 200)
        assert dst.crs == src.crs
        assert dst.crs.to_epsg() == src.crs.to_epsg()
        assert dst.transform == src.transform
        assert dst.bounds == src.bounds
        assert dst.count == 1
        assert dst.dtypes == ("uint8",)
        assert dst.nodata == 255
        np.testing.assert_array_equal(dst.read(1), data)


def test_layout_tiled_deflate_overviews_colours(scene: Path, tmp_path: Path) -> None:
    out = tmp_path / "scene_classes.tif"
    _write_for_scene(scene, out, _classes(200, 300))
    with rasterio.open(out) as dst:
        assert dst.profile["tiled"] is True
        assert dst.block_shapes == [(512, 512)]
        assert dst.compression == Compression.deflate
        assert dst.overviews(1) == [2]
        assert dst.colorinterp == (ColorInterp.palette,)
        assert dst.descriptions == ("class_id",)
        colormap = dst.colormap(1)
        for value, colour in enumerate(COLOURS):
            assert colormap[value] == (*colour, 255)
    with rasterio.open(out, overview_level=0) as overview:
        assert (overview.width, overview.height) == (150, 100)


def test_category_names_sidecar_readable_by_gdal(scene: Path, tmp_path: Path) -> None:
    out = tmp_path / "scene_classes.tif"
    _write_for_scene(scene, out, _classes(200, 300))
    sidecar = tmp_path / "scene_classes.tif.aux.xml"
    assert sorted(os.listdir(tmp_path)) == [
        "scene.tif",
        "scene_classes.qml",
        "scene_classes.tif",
        "scene_classes.tif.aux.xml",
    ]
    categories = (
        ET.parse(sidecar).getroot().findall("PAMRasterBand[@band='1']/CategoryNames/Category")
    )
    assert [c.text for c in categories] == NAMES
    assert _gdal_category_names(out) == NAMES
    # The QGIS default style lists exactly the classes.
    qml = ET.parse(tmp_path / "scene_classes.qml").getroot()
    entries = qml.findall("pipe/rasterrenderer/colorPalette/paletteEntry")
    assert [(e.get("value"), e.get("label")) for e in entries] == [
        (str(i), n) for i, n in enumerate(NAMES)
    ]


@pytest.mark.skipif(shutil.which("gdalinfo") is None, reason="gdalinfo not installed")
def test_gdalinfo_lists_categories(scene: Path, tmp_path: Path) -> None:
    out = tmp_path / "scene_classes.tif"
    _write_for_scene(scene, out, _classes(200, 300))
    text = subprocess.run(["gdalinfo", str(out)], check=True, capture_output=True, text=True).stdout
    assert "Categories:" in text
    for index, name in enumerate(NAMES):
        assert f"{index}: {name}" in text
    assert "NoData Value=255" in text
    assert "Overviews: 150x100" in text


def test_unwritten_pixels_read_nodata_and_windows_round_trip(tmp_path: Path) -> None:
    out = tmp_path / "big_classes.tif"
    width, height = 1100, 700  # 3 x 2 blocks of 512
    data = np.full((height, width), 255, np.uint8)
    written = _classes(300, 400, seed=3)
    data[100:400, 600:1000] = written  # across four blocks; two blocks never touched
    with ClassRasterWriter(
        out,
        width=width,
        height=height,
        crs="EPSG:32633",
        transform=from_origin(500_000.0, 5_000_000.0, 10.0, 10.0),
        class_names=NAMES,
        colours=COLOURS,
    ) as writer:
        for row in range(100, 400, 100):
            for col in range(600, 1000, 100):
                writer.write(Window(col, row, 100, 100), data[row : row + 100, col : col + 100])
    with rasterio.open(out) as dst:
        assert dst.overviews(1) == [2, 4, 8]
        full = dst.read(1)
        np.testing.assert_array_equal(full, data)
        assert (full[:, :512] == 255).all()  # blocks never written
        masked = dst.read(1, masked=True)
        assert masked.mask.sum() == width * height - 300 * 400
    with rasterio.open(out, overview_level=0) as overview:
        # Mode resampling keeps class ids: no averaged values that are not classes.
        values = set(np.unique(overview.read(1)).tolist())
        assert values <= {0, 1, 2, 3, 255}
        assert {0, 1, 2, 3} <= values


def test_pixel_space_output_without_crs(tmp_path: Path) -> None:
    out = tmp_path / "pix_classes.tif"
    data = _classes(200, 300)
    with ClassRasterWriter(
        out,
        width=300,
        height=200,
        crs=None,
        transform=Affine.identity(),
        class_names=NAMES,
        colours=COLOURS,
    ) as writer:
        writer.write(Window(0, 0, 300, 200), data)
    with rasterio.open(out) as dst:
        assert dst.crs is None
        np.testing.assert_array_equal(dst.read(1), data)


@pytest.mark.parametrize(
    ("window", "data", "message"),
    [
        (Window(0, 0, 10, 10), np.zeros((10, 10), np.int64), "uint8"),
        (Window(0, 0, 10, 10), np.zeros((10, 11), np.uint8), "does not match"),
        (Window(295, 0, 10, 10), np.zeros((10, 10), np.uint8), "outside"),
        (Window(0, 0, 10, 10), np.full((10, 10), 4, np.uint8), "class id 4"),
    ],
)
def test_bad_writes_rejected(
    tmp_path: Path, window: Window, data: np.ndarray, message: str
) -> None:
    writer = ClassRasterWriter(
        tmp_path / "x.tif",
        width=300,
        height=200,
        crs="EPSG:32633",
        transform=from_origin(500_000.0, 5_000_000.0, 1.0, 1.0),
        class_names=NAMES,
        colours=COLOURS,
    )
    with pytest.raises(ValueError, match=message):
        writer.write(window, data)
    writer.abort()


def test_failure_inside_block_finishes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "x.tif"
    with (
        pytest.raises(RuntimeError),
        ClassRasterWriter(
            out,
            width=300,
            height=200,
            crs="EPSG:32633",
            transform=from_origin(500_000.0, 5_000_000.0, 1.0, 1.0),
            class_names=NAMES,
            colours=COLOURS,
        ) as writer,
    ):
        writer.write(Window(0, 0, 10, 10), np.zeros((10, 10), np.uint8))
        raise RuntimeError("model failed")
    assert writer.closed
    assert os.listdir(tmp_path) == []  # neither the output nor its intermediate


def test_with_atomic_outputs(scene: Path, tmp_path: Path) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    paths = output_paths(scene, out_dir)
    finals = [paths["raster"], paths["aux"], paths["qml"]]
    with atomic_outputs(finals) as temps:
        _write_for_scene(scene, temps[0], _classes(200, 300))
    assert sorted(os.listdir(out_dir)) == [
        "scene_classes.qml",
        "scene_classes.tif",
        "scene_classes.tif.aux.xml",
    ]
    assert _gdal_category_names(paths["raster"]) == NAMES

    with pytest.raises(RuntimeError), atomic_outputs(finals, overwrite=True) as temps:
        _write_for_scene(scene, temps[0], _classes(200, 300, seed=1))
        raise RuntimeError("second output failed")
    with rasterio.open(paths["raster"]) as dst:
        np.testing.assert_array_equal(dst.read(1), _classes(200, 300))
    assert sorted(os.listdir(out_dir)) == [
        "scene_classes.qml",
        "scene_classes.tif",
        "scene_classes.tif.aux.xml",
    ]


def test_overview_factors() -> None:
    assert overview_factors(300, 200) == [2]
    assert overview_factors(1100, 700) == [2, 4, 8]
    assert overview_factors(30_000, 30_000) == [2, 4, 8, 16, 32, 64, 128]
    assert overview_factors(1, 500) == []
