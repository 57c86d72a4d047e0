"""The quicklook PNG: size, the class colours blended over the scene, a legend with shares."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from PIL import Image
from rasterio.enums import Resampling
from rasterio.transform import from_origin
from rasterio.windows import Window

from mscn_geo.io import ClassRasterWriter, class_colours
from mscn_geo.quicklook import ALPHA, LEGEND_WIDTH, legend_rows, render_quicklook, swatch_box
from mscn_geo.reader import open_scene

NAMES = ["forest", "river", "denseresidential"]
COLOURS = class_colours(NAMES)
TRANSFORM = from_origin(500_000.0, 5_000_000.0, 0.5, 0.5)


def grey_scene(path: Path, width: int, height: int, overviews: bool = True) -> Path:
    data = np.full((3, height, width), 100, np.uint8)
    data[:, :, : width // 10] = 0  # nodata margin
    profile = {
        "driver": "GTiff", "width": width, "height": height, "count": 3, "dtype": "uint8",
        "crs": "EPSG:32633", "transform": TRANSFORM, "nodata": 0, "tiled": True,
        "blockxsize": 256, "blockysize": 256,
    }  # fmt: skip
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(data)
        if overviews:
            ds.build_overviews([2, 4, 8], Resampling.average)
    return path


def class_raster(path: Path, width: int, height: int) -> Path:
    data = np.zeros((height, width), np.uint8)  # forest on the left
    data[:, width // 2 :] = 1  # river on the right
    data[:, : width // 10] = 255  # nodata margin
    with ClassRasterWriter(
        path, width=width, height=height, crs="EPSG:32633", transform=TRANSFORM,
        class_names=NAMES, colours=COLOURS,
    ) as writer:  # fmt: skip
        writer.write(Window(0, 0, width, height), data)
    return path


def test_quicklook_png_size_overlay_and_legend(tmp_path: Path) -> None:
    width, height = 3000, 1000
    scene = grey_scene(tmp_path / "scene.tif", width, height)
    classes = class_raster(tmp_path / "classes.tif", width, height)
    info = open_scene(scene, ["red", "green", "blue"])
    quicklook = render_quicklook(
        info, classes, NAMES, COLOURS, shares=[0.4, 0.6, 0.0], max_side=600
    )
    assert quicklook.warnings == []
    path = tmp_path / "scene_quicklook.png"
    quicklook.save(path)

    image = Image.open(path)
    assert image.format == "PNG" and image.mode == "RGB"
    # 3000 x 1000 scaled to 600 px on the long side, plus the legend panel.
    assert image.size == (600 + LEGEND_WIDTH, 200)
    pixels = np.asarray(image).astype(int)
    blend = [round((1 - ALPHA) * 100 + ALPHA * c) for c in COLOURS[0]]
    assert np.abs(pixels[100, 150] - blend).max() <= 1  # forest over grey
    blend = [round((1 - ALPHA) * 100 + ALPHA * c) for c in COLOURS[1]]
    assert np.abs(pixels[100, 450] - blend).max() <= 1  # river over grey
    assert (pixels[100, 20] == 235).all()  # nodata margin

    # Legend: river (60 %) first, then forest; no swatch for the absent class.
    assert legend_rows(NAMES, [0.4, 0.6, 0.0]) == [(1, "river  60.0 %"), (0, "forest  40.0 %")]
    for row, class_id in enumerate([1, 0]):
        x0, y0, x1, y1 = swatch_box(600, row)
        assert (pixels[y0:y1, x0:x1] == COLOURS[class_id]).all()
        text = pixels[y0:y1, x1 + 8 : 600 + LEGEND_WIDTH - 14]
        assert (text < 128).all(axis=2).sum() > 20  # dark label text beside the swatch
    x0, y0, x1, y1 = swatch_box(600, 2)
    assert (pixels[y0:y1, 600:] == 255).all()  # nothing below the last row
    assert not (pixels[:, 600:] == COLOURS[2]).all(axis=2).any()


def test_small_scene_is_not_enlarged_and_legend_sets_the_height(tmp_path: Path) -> None:
    scene = grey_scene(tmp_path / "scene.tif", 120, 80, overviews=False)
    classes = class_raster(tmp_path / "classes.tif", 120, 80)
    info = open_scene(scene, ["red", "green", "blue"])
    quicklook = render_quicklook(info, classes, NAMES, COLOURS)
    assert quicklook.map_size == (120, 80)
    # All three classes listed without shares: taller than the map.
    assert quicklook.image.size[0] == 120 + LEGEND_WIDTH
    # The last row's swatch is centred in its 24 px row, then a 14 px margin.
    assert quicklook.image.size[1] == swatch_box(120, 2)[3] + 4 + 14
    assert quicklook.warnings == []  # small enough to need no overviews


def test_missing_overviews_are_reported(tmp_path: Path) -> None:
    scene = grey_scene(tmp_path / "scene.tif", 900, 300, overviews=False)
    classes = class_raster(tmp_path / "classes.tif", 900, 300)
    info = open_scene(scene, ["red", "green", "blue"])
    quicklook = render_quicklook(info, classes, NAMES, COLOURS, max_side=300)
    assert quicklook.map_size == (300, 100)
    assert "no overviews" in quicklook.warnings[0]


@pytest.mark.parametrize("shares", [None, [0.0, 0.0, 1.0]])
def test_legend_rows(shares: list[float] | None) -> None:
    rows = legend_rows(NAMES, shares)
    if shares is None:
        assert rows == [(0, "forest"), (1, "river"), (2, "denseresidential")]
    else:
        assert rows == [(2, "denseresidential  100.0 %")]
