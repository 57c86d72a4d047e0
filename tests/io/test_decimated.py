"""Reduced reads in parallel strips give the single read's pixels."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from rasterio.enums import Resampling

from mscn_geo.io.decimated import read_decimated


def _single(path, indexes, shape, resampling, masks=False):
    with rasterio.open(path) as ds:
        out_shape = (len(indexes), *shape)
        if masks:
            return ds.read_masks(indexes, out_shape=out_shape)
        return ds.read(indexes, out_shape=out_shape, resampling=resampling)


@pytest.mark.parametrize("shape", [(97, 130), (64, 64), (301, 17), (40, 50)])
@pytest.mark.parametrize("resampling", [Resampling.average, Resampling.nearest])
def test_strips_equal_one_read(make_scene, shape, resampling):
    scene = make_scene(1000, 700, nodata_cols=130)
    got = read_decimated(scene, [1, 2, 3], shape, resampling, threads=3)
    want = _single(scene, [1, 2, 3], shape, resampling)
    assert got.shape == (3, *shape)
    np.testing.assert_array_equal(got, want)
    masks = read_decimated(scene, [1, 3], shape, resampling, masks=True, threads=3)
    np.testing.assert_array_equal(masks, _single(scene, [1, 3], shape, resampling, masks=True))
    assert (masks[:, :, 0] == 0).all() and (masks[:, :, -1] == 255).all()


def test_a_raster_with_overviews_reads_them(make_scene):
    scene = make_scene(512, 512)
    with rasterio.open(scene, "r+") as ds:
        ds.build_overviews([2, 4], Resampling.average)
    got = read_decimated(scene, [2], (128, 128), Resampling.nearest, threads=4)
    with rasterio.open(scene) as ds:
        overview = ds.read(2, out_shape=(128, 128))  # what GDAL serves from the 4x overview
    np.testing.assert_array_equal(got[0], overview)
