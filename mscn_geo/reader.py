"""Opening a scene, checking it can be classified, and reading tiles from it.

Nothing here reads a whole scene: :class:`SceneInfo` comes from the header, and
:class:`TileReader` reads one window (pixels and validity mask) at a time.
"""

from __future__ import annotations

import functools
import itertools
import math
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.enums import ColorInterp, MaskFlags, Resampling
from rasterio.errors import RasterioError
from rasterio.windows import Window

from mscn_geo.errors import InputError, OptionError, explain
from mscn_geo.remote import as_scene
from mscn_geo.scaling import Scaling, estimate_percentiles, fixed_scaling, parse_scale
from mscn_geo.tiling import Tile

_COLOUR_NAMES = {"red": ColorInterp.red, "green": ColorInterp.green, "blue": ColorInterp.blue}


@dataclass
class SceneInfo:
    """What classify needs to know about a scene, read from its header.

    Attributes:
        band_indexes: 1-based bands fed to the model, in the model's band order.
        nodata_from_value: validity is ``any(band != nodata)`` over the chosen bands
            (read from the pixels; no second read for the mask).
        warnings: things the user should know (band choice guessed, ...).
        crs: ``None`` only when opened with ``allow_no_crs`` (pixel-space outputs).
        scaling: how pixels become 0..255 (non-uint8 data or ``--scale``);
            ``None``: used as they are.
        read_tile, read_scale: with ``--resample``, tiles of ``read_tile`` px are
            read from windows of ``read_tile * read_scale`` scene pixels;
            ``None``/1.0: no resampling.
        aoi: the area of interest (:class:`mscn_geo.aoi.Aoi`); tiles that do not
            touch it are skipped unread.
    """

    path: Path | str  # str: a remote scene (mscn_geo.remote)
    width: int
    height: int
    count: int
    dtype: str
    crs: CRS | None
    transform: Any  # affine.Affine
    res: tuple[float, float]
    band_indexes: list[int]
    nodata: float | None
    nodata_from_value: bool
    warnings: list[str] = field(default_factory=list)
    scaling: Scaling | None = None
    read_tile: int | None = None
    read_scale: float = 1.0
    aoi: Any = None

    @property
    def float_data(self) -> bool:
        return np.dtype(self.dtype).kind == "f" if self.dtype != "mixed" else False


def parse_bands(text: str | Sequence[int] | None) -> list[int] | None:
    """``"1,2,3"`` -> ``[1, 2, 3]`` (1-based band numbers); ``None`` stays ``None``."""
    if text is None or (isinstance(text, Sequence) and not isinstance(text, str)):
        return None if text is None else [int(b) for b in text]
    try:
        bands = [int(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError:
        raise OptionError(
            f"bands must be 1-based band numbers like 1,2,3, got {text!r}", field="bands"
        ) from None
    if not bands:
        raise OptionError("bands is empty", field="bands")
    return bands


def _open(path: Path | str) -> rasterio.DatasetReader:
    if isinstance(path, str):  # remote: only GDAL can tell what is wrong
        try:
            return rasterio.open(path)
        except (RasterioError, OSError) as exc:
            raise InputError(f"{path} cannot be opened ({explain(exc)})") from exc
    if not path.exists():
        raise InputError(f"scene not found: {path}")
    if path.is_dir():
        raise InputError(f"scene is a directory, not a raster: {path}")
    if not os.access(path, os.R_OK):
        raise InputError(f"scene is not readable (permission denied): {path}")
    if path.stat().st_size == 0:
        raise InputError(f"scene is an empty file: {path}")
    try:
        return rasterio.open(path)
    except PermissionError as exc:
        raise InputError(f"scene is not readable (permission denied): {path}") from exc
    except (RasterioError, OSError) as exc:
        if "permission denied" in str(exc).lower():
            raise InputError(f"scene is not readable (permission denied): {path}") from exc
        first = explain(exc, "unknown format")
        raise InputError(f"{path} is not a readable raster ({first})") from exc


def _choose_bands(
    ds: rasterio.DatasetReader, model_bands: list[str], bands: list[int] | None
) -> tuple[list[int], list[str]]:
    n = len(model_bands)
    wanted = ", ".join(model_bands)
    if bands is not None:
        # Out of range first: "bands 9" names a band the scene lacks, whatever the count.
        bad = [b for b in bands if not 1 <= b <= ds.count]
        if bad:
            raise OptionError(
                f"bands {bad[0]} is out of range: the scene has {ds.count} band(s)", field="bands"
            )
        if len(bands) != n:
            given = ",".join(map(str, bands))
            raise OptionError(
                f"bands {given} selects {len(bands)} band(s); the model needs {n} ({wanted})",
                field="bands",
            )
        return list(bands), []
    interp = list(ds.colorinterp)
    usable = [i + 1 for i, ci in enumerate(interp) if ci != ColorInterp.alpha]
    if len(usable) < n:
        hint = (
            f"pass bands={','.join(['1'] * n)} to repeat it"
            if len(usable) == 1
            else f"use a scene with {n} band(s) or choose some more than once with bands=LIST"
        )
        raise InputError(
            f"scene has {len(usable)} band(s) and the model needs {n} ({wanted}); {hint}",
            field="bands",
        )
    if len(usable) == n:
        return usable, []
    # More bands than the model needs: pick by colour interpretation when we can.
    if all(b in _COLOUR_NAMES for b in model_bands):
        by_colour = [
            interp.index(_COLOUR_NAMES[b]) + 1 for b in model_bands if _COLOUR_NAMES[b] in interp
        ]
        if len(by_colour) == n and all(interp.count(_COLOUR_NAMES[b]) == 1 for b in model_bands):
            return by_colour, []
    chosen = usable[:n]
    note = (
        f"scene has {ds.count} bands; using bands {','.join(map(str, chosen))} as {wanted} "
        "(choose others with bands=LIST)"
    )
    return chosen, [note]


def _scaling(
    ds: rasterio.DatasetReader,
    dtype: str,
    bands: list[int],
    scale: tuple[float, float] | Scaling | None,
) -> Scaling | None:
    if dtype == "mixed":
        raise InputError(
            f"{ds.name}: the bands used have different data types; choose bands of one type"
        )
    if np.dtype(dtype).kind not in "uif":
        raise InputError(f"{ds.name}: {dtype} data is not supported (real-valued bands only)")
    if isinstance(scale, Scaling):  # a model's: it reads every scene the way it was trained
        if len(scale.low) != len(bands):
            raise OptionError(
                f"the model's scaling has {len(scale.low)} bands; {len(bands)} bands are used"
            )
        return scale
    if scale is not None:
        return fixed_scaling(scale, len(bands))
    if dtype == "uint8":
        return None
    return estimate_percentiles(ds, bands, ds.nodata)


def open_scene(
    path: str | os.PathLike[str],
    model_bands: list[str],
    bands: list[int] | None = None,
    scale: str | tuple[float, float] | Scaling | None = None,
    allow_no_crs: bool = False,
) -> SceneInfo:
    """Open ``path``, check it can be classified with a model taking ``model_bands``.

    Args:
        model_bands: band names the model expects (``meta.bands``), in order.
        bands: 1-based scene bands to use (``--bands``); default: as many bands as
            the model needs, picked as red/green/blue by colour interpretation when
            the scene has more bands and says which is which, else the first ones
            (alpha bands are never picked).
        scale: ``"MIN,MAX"`` linear scaling to 0..255 (``--scale``); default:
            none for uint8, a percentile stretch otherwise (:mod:`mscn_geo.scaling`);
            a :class:`~mscn_geo.scaling.Scaling` (a model's) is used as it is.
        allow_no_crs: accept a scene without CRS (outputs in its pixel/own
            coordinates, without CRS) instead of failing.

    Raises:
        InputError: missing, not a raster, corrupt, no CRS, too few bands.
        OptionError: ``bands`` of the wrong length or out of range, bad ``scale``.
    """
    path = as_scene(path)
    bounds = scale if isinstance(scale, Scaling) else parse_scale(scale)
    ds = _open(path)
    with ds:
        if ds.crs is None and not allow_no_crs:
            raise InputError(
                f"{path} has no CRS: outputs could not be placed on a map "
                "(assign one, e.g. gdal_edit.py -a_srs EPSG:xxxx, or pass allow_no_crs=True "
                "for outputs without CRS)",
                field="allow_no_crs",
            )
        band_indexes, warnings = _choose_bands(ds, model_bands, bands)
        dtypes = {ds.dtypes[b - 1] for b in band_indexes}
        dtype = dtypes.pop() if len(dtypes) == 1 else "mixed"
        flags = [ds.mask_flag_enums[b - 1] for b in band_indexes]
        from_value = ds.nodata is not None and all(f == [MaskFlags.nodata] for f in flags)
        try:  # a truncated or corrupt file often opens but fails on its first read
            ds.read(band_indexes[0], window=Window(0, 0, 1, 1))
            scaling = _scaling(ds, dtype, band_indexes, bounds)
        except RasterioError as exc:
            raise InputError(f"{path} is corrupt or unreadable ({explain(exc)})") from exc
        return SceneInfo(
            path=path,
            width=ds.width,
            height=ds.height,
            count=ds.count,
            dtype=dtype,
            crs=ds.crs,
            transform=ds.transform,
            res=ds.res,
            band_indexes=band_indexes,
            nodata=ds.nodata,
            nodata_from_value=from_value,
            warnings=warnings,
            scaling=scaling,
        )


def validity(info: SceneInfo, data: np.ndarray, masks: np.ndarray | None) -> np.ndarray:
    """(h, w) bool: pixels of ``data`` (bands, h, w) that may decide a class.

    Valid where any band used is valid (dataset ``masks``, or not ``nodata`` when
    validity comes from the value); a NaN in any band makes a pixel nodata.
    """
    shape = data.shape[1:]
    nodata = info.nodata
    if not info.float_data:
        # Most tiles hold no nodata at all: one min/max pass tells, and they share
        # one read-only all-True mask instead of building their own.
        if masks is None:
            if nodata is None or nodata < data.min() or nodata > data.max():
                return _all_valid(shape)
        elif masks.min() == 255:
            return _all_valid(shape)
    if masks is None:
        if nodata is not None and math.isnan(nodata):
            valid = np.ones(shape, dtype=bool)
        else:
            valid = (data != nodata).any(axis=0)
    else:
        valid = masks.any(axis=0)
    if info.float_data:
        valid &= ~np.isnan(data).any(axis=0)
    return valid


@functools.lru_cache(maxsize=16)
def _all_valid(shape: tuple[int, int]) -> np.ndarray:
    """A read-only (h, w) all-True mask, shared by every fully valid tile of that shape."""
    mask = np.ones(shape, dtype=bool)
    mask.flags.writeable = False
    return mask


def to_model_range(info: SceneInfo, data: np.ndarray) -> np.ndarray:
    """Pixels as uint8 0..255 (scaled per :attr:`SceneInfo.scaling`)."""
    return data if info.scaling is None else info.scaling.apply(data)


@dataclass
class TilePixels:
    """One tile read from the scene.

    Attributes:
        pixels: (bands, tile, tile) uint8, padding zero-filled; ``None`` when the
            tile has no valid pixel (it is skipped and never read further).
        valid: (tile, tile) bool, False for nodata and for padding.
        nodata_fraction: nodata pixels / in-scene pixels of the window (padding
            is not counted).
    """

    tile: Tile
    pixels: np.ndarray | None
    valid: np.ndarray | None
    nodata_fraction: float


class _BlockCacheCap:
    """The process's cap on GDAL's block cache (see :func:`cap_block_cache`)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.default: int | None = None  # GDAL's cap before the first call
        self.needed = 0  # the largest need of any call so far


_CACHE_CAP = _BlockCacheCap()


def cap_block_cache(width: int, bands: int, itemsize: int, rows: int) -> int | None:
    """Cap GDAL's block cache for this process; returns the cap (``None``: left alone).

    GDAL keeps decoded (and, when writing, dirty) blocks up to ``GDAL_CACHEMAX``,
    default 5% of RAM: 1.2 GB on a 24 GB machine, 6 GB on 128 GB. Reading or
    writing a 30,000 px scene once would fill it, although tiles only share
    blocks with their neighbours in the same or next tile row. Each reader or
    writer needs two strips of ``rows`` x ``width`` (clamped to 64 MiB..1 GiB).

    GDAL has one cache per process, so this is a process-level setting, taken
    once and never restored: the cap is the largest need of any reader or writer
    so far (it only grows, so concurrent readers never shrink each other's
    cache, whatever order they close in), and never more than GDAL's own cap
    before the first call. An explicit ``GDAL_CACHEMAX`` in the environment is
    the user's choice and is left alone.
    """
    if "GDAL_CACHEMAX" in os.environ:
        return None
    wanted = 2 * max(rows, 512) * width * bands * itemsize
    wanted = min(max(wanted, 64 * 2**20), 2**30)
    state = _CACHE_CAP
    with state.lock:
        current = int(rasterio.env.get_gdal_config("GDAL_CACHEMAX") or 0)
        if state.default is None:
            state.default = current
        state.needed = max(state.needed, wanted)
        cap = min(state.needed, state.default) if state.default else state.needed
        if cap != current:
            rasterio.env.set_gdal_config("GDAL_CACHEMAX", cap)
        return cap


def _is_strip(tiles: Sequence[Tile]) -> bool:
    """Tiles of one window row, each starting at most a tile's width after the one
    before (neighbours or overlapping): one window reads exactly what they need."""
    for prev, tile in itertools.pairwise(tiles):
        p, w = prev.window, tile.window
        if not (
            w.row_off == p.row_off
            and w.height == p.height
            and p.col_off < w.col_off <= p.col_off + p.width
        ):
            return False
    return True


class TileReader:
    """Reads tiles of one scene; safe to share between threads.

    Each thread gets its own rasterio dataset handle (GDAL handles are not
    thread-safe); :meth:`close` closes them all.
    """

    def __init__(self, info: SceneInfo, tile_size: int) -> None:
        self.info = info
        # With --resample the grid's tiles (``tile_size`` scene px) are read at
        # the model's tile size ``info.read_tile``.
        self.window_size = tile_size
        self.tile_size = info.read_tile or tile_size
        self._local = threading.local()
        self._handles: list[rasterio.DatasetReader] = []
        self._lock = threading.Lock()
        itemsize = np.dtype(info.dtype).itemsize if info.dtype != "mixed" else 8
        rows = max(tile_size, self.tile_size)
        cap_block_cache(info.width, len(info.band_indexes), itemsize, rows)

    @property
    def block_shape(self) -> tuple[int, int]:
        """(rows, cols) of the file's blocks (first band used; strips when untiled)."""
        ds = self._dataset()
        rows, cols = ds.block_shapes[self.info.band_indexes[0] - 1]
        return int(rows), int(cols)

    def _dataset(self) -> rasterio.DatasetReader:
        ds = getattr(self._local, "ds", None)
        if ds is None:
            ds = rasterio.open(self.info.path)
            self._local.ds = ds
            with self._lock:
                self._handles.append(ds)
        return ds

    def out_shape(self, window: Window) -> tuple[int, int] | None:
        """(h, w) pixels read for ``window``; ``None`` unless resampling."""
        if self.info.read_tile is None:
            return None

        def side(length: float) -> int:
            if length >= self.window_size:
                return self.tile_size
            return max(1, min(self.tile_size, round(length / self.info.read_scale)))

        return side(window.height), side(window.width)

    def _read_args(self, window: Window) -> dict[str, Any]:
        shape = self.out_shape(window)
        if shape is None:
            return {"window": window}
        n = len(self.info.band_indexes)
        return {"window": window, "out_shape": (n, *shape), "resampling": Resampling.bilinear}

    def valid_mask(self, window: Window) -> np.ndarray:
        """(height, width) bool validity of the chosen bands inside ``window``."""
        ds = self._dataset()
        masks = ds.read_masks(self.info.band_indexes, window=window)
        return masks.any(axis=0)

    def read(self, tile: Tile) -> TilePixels:
        """Read ``tile``'s window and validity; skip-ready when nothing is valid
        or the window is outside the area of interest."""
        info, window = self.info, tile.window
        if info.aoi is not None and not info.aoi.intersects_window(info.transform, window):
            return TilePixels(tile, None, None, 1.0)
        ds = self._dataset()
        args = self._read_args(window)
        try:
            data = ds.read(info.band_indexes, **args)
            masks = None if info.nodata_from_value else ds.read_masks(info.band_indexes, **args)
        except RasterioError as exc:
            raise self._read_error(tile, exc) from exc
        return self._pixels(tile, data, masks)

    def can_read_runs(self) -> bool:
        """Whether :meth:`read_run` saves work over :meth:`read` tile by tile (not
        with resampling or an area of interest, which take the per-tile path)."""
        return self.info.read_tile is None and self.info.aoi is None

    def read_run(self, tiles: Sequence[Tile]) -> list[TilePixels]:
        """Read several tiles at once; results equal :meth:`read`'s tile by tile (tests).

        Neighbours in one row are read through one window (:meth:`_read_strip`);
        other tiles each through their own window into one shared buffer. Either
        way the per-call costs are paid per run, not per tile, which is most of
        the reading time when blocks decode fast.
        """
        if not self.can_read_runs() or any(t.padded for t in tiles):
            return [self.read(tile) for tile in tiles]
        if _is_strip(tiles):
            return self._read_strip(tiles)
        info, t = self.info, self.tile_size
        shape = (len(tiles), len(info.band_indexes), t, t)
        data = np.empty(shape, dtype=info.dtype)
        masks = None if info.nodata_from_value else np.empty(shape, dtype=np.uint8)
        ds = self._dataset()
        for i, tile in enumerate(tiles):
            try:
                ds.read(info.band_indexes, window=tile.window, out=data[i])
                if masks is not None:
                    ds.read_masks(info.band_indexes, window=tile.window, out=masks[i])
            except RasterioError as exc:
                raise self._read_error(tile, exc) from exc
        return [
            self._pixels(tile, data[i], None if masks is None else masks[i])
            for i, tile in enumerate(tiles)
        ]

    def _read_strip(self, tiles: Sequence[Tile]) -> list[TilePixels]:
        """Neighbouring tiles of one row through one window: GDAL decodes each of
        the window's blocks once, even where the tiles overlap."""
        info = self.info
        first, last = tiles[0].window, tiles[-1].window
        x0 = int(first.col_off)
        span = Window(x0, first.row_off, int(last.col_off) + int(last.width) - x0, first.height)
        ds = self._dataset()
        try:
            data = ds.read(info.band_indexes, window=span)
            masks = None
            if not info.nodata_from_value:
                masks = ds.read_masks(info.band_indexes, window=span)
        except RasterioError:
            # Tile by tile, so the error names the tile that cannot be read.
            return [self.read(tile) for tile in tiles]
        valid = validity(info, data, masks)
        data = to_model_range(info, data)
        all_valid = valid is _all_valid(valid.shape)
        if not all_valid:  # valid pixels per column, summed: a tile's count is a difference
            counts = np.concatenate(([0], np.cumsum(np.count_nonzero(valid, axis=0))))
        out = []
        for tile in tiles:
            a = int(tile.window.col_off) - x0
            b = a + int(tile.window.width)
            size = (b - a) * valid.shape[0]
            n_valid = size if all_valid else int(counts[b] - counts[a])
            if n_valid == 0:
                out.append(TilePixels(tile, None, None, 1.0))
                continue
            mask = _all_valid((valid.shape[0], b - a)) if all_valid else valid[:, a:b]
            out.append(TilePixels(tile, data[:, :, a:b], mask, 1.0 - n_valid / size))
        return out

    def _read_error(self, tile: Tile, exc: Exception) -> InputError:
        return InputError(
            f"{self.info.path}: cannot read tile row {tile.row} col {tile.col} "
            f"(corrupt file?): {explain(exc)}"
        )

    def _pixels(self, tile: Tile, data: np.ndarray, masks: np.ndarray | None) -> TilePixels:
        """A read window's pixels and masks -> the tile's model-range pixels and validity."""
        valid = validity(self.info, data, masks)
        data = to_model_range(self.info, data)
        n_valid = valid.size if valid is _all_valid(valid.shape) else int(np.count_nonzero(valid))
        if n_valid == 0:
            return TilePixels(tile, None, None, 1.0)
        fraction = 1.0 - n_valid / valid.size
        if tile.padded:
            t = self.tile_size
            h, w = valid.shape
            full = np.zeros((data.shape[0], t, t), dtype=data.dtype)
            full[:, :h, :w] = data
            full_valid = np.zeros((t, t), dtype=bool)
            full_valid[:h, :w] = valid
            data, valid = full, full_valid
        return TilePixels(tile, data, valid, fraction)

    def close(self) -> None:
        with self._lock:
            for ds in self._handles:
                ds.close()
            self._handles.clear()

    def __enter__(self) -> TileReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
