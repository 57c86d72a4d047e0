"""A raster read at a reduced size (a picture of a whole scene), in row strips on threads.

Without overviews GDAL decodes every block of the scene for a reduced read,
on one thread (``GDAL_NUM_THREADS`` does not split resampled reads): 5 s for
a 30,000 px deflate scene on the 2-core VM. Strips of output rows read from
their own dataset handles run in parallel (GDAL releases the GIL) and give the
same pixels: each strip starts at an output row that falls on a whole source
row (``h / gcd(H, h)`` output rows apart), so its window is in whole pixels and
GDAL samples it as the single read does. Where no such rows split the output
(``gcd(H, h)`` of 1), the raster is read in one call.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.windows import Window

__all__ = ["read_decimated"]

#: Output strips per thread: smaller strips balance the threads' work.
_STRIPS_PER_THREAD = 4


def read_decimated(
    path: str | Path,
    indexes: Sequence[int],
    shape: tuple[int, int],
    resampling: Resampling,
    masks: bool = False,
    threads: int | None = None,
) -> np.ndarray:
    """(len(indexes), h, w) pixels (or GDAL masks with ``masks``) of the whole raster.

    Args:
        shape: (h, w) output size in pixels.
        threads: parallel strips (default: the CPU count, at most 16). A raster
            with overviews, or one not bigger than ``shape``, is read in one call:
            GDAL then reads the overview, which is already fast.
    """
    h, w = shape
    with rasterio.open(path) as ds:
        single = bool(ds.overviews(indexes[0])) or (ds.height <= h and ds.width <= w)
        threads = threads or min(16, os.cpu_count() or 1)
        if single or threads == 1 or h < 2:
            return _read(ds, indexes, Window(0, 0, ds.width, ds.height), shape, resampling, masks)
        height, width = ds.height, ds.width
    # Strips start at output rows whose source row is a whole number (multiples of
    # ``unit``): fractional windows moved GDAL's average by 1 on a few pixels.
    unit = h // math.gcd(height, h)
    units = h // unit
    if units < 2:
        with rasterio.open(path) as ds:
            return _read(ds, indexes, Window(0, 0, width, height), shape, resampling, masks)
    cuts = np.linspace(0, units, min(units, threads * _STRIPS_PER_THREAD) + 1).round()
    bounds = cuts.astype(int) * unit
    step = height // math.gcd(height, h)  # source rows per ``unit`` output rows

    def strip(i: int) -> np.ndarray:
        r0, r1 = int(bounds[i]), int(bounds[i + 1])
        window = Window(0, r0 // unit * step, width, (r1 - r0) // unit * step)
        with rasterio.open(path) as ds:
            return _read(ds, indexes, window, (r1 - r0, w), resampling, masks)

    with ThreadPoolExecutor(threads) as pool:
        parts = list(pool.map(strip, range(len(bounds) - 1)))
    return np.concatenate(parts, axis=1)


def _read(
    ds: rasterio.DatasetReader,
    indexes: Sequence[int],
    window: Window,
    shape: tuple[int, int],
    resampling: Resampling,
    masks: bool,
) -> np.ndarray:
    out_shape = (len(indexes), *shape)
    if masks:
        return ds.read_masks(list(indexes), window=window, out_shape=out_shape)
    return ds.read(list(indexes), window=window, out_shape=out_shape, resampling=resampling)
