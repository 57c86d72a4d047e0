"""Opening a scene, checking it can be classified, and reading tiles from it.

Nothing here reads a whole scene: :class:`SceneInfo` comes from the header, and
:class:`TileReader` reads one window (pixels and validity mask) at a time.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.enums import ColorInterp, MaskFlags
from rasterio.errors import RasterioError, RasterioIOError
from rasterio.windows import Window

from mscn_geo.errors import InputError, OptionError
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
    """

    path: Path
    width: int
    height: int
    count: int
    dtype: str
    crs: CRS
    transform: Any  # affine.Affine
    res: tuple[float, float]
    band_indexes: list[int]
    nodata: float | None
    nodata_from_value: bool
    warnings: list[str] = field(default_factory=list)


def parse_bands(text: str | Sequence[int] | None) -> list[int] | None:
    """``"1,2,3"`` -> ``[1, 2, 3]`` (1-based band numbers); ``None`` stays ``None``."""
    if text is None or (isinstance(text, Sequence) and not isinstance(text, str)):
        return None if text is None else [int(b) for b in text]
    try:
        bands = [int(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError:
        raise OptionError(
            f"--bands must be 1-based band numbers like 1,2,3, got {text!r}"
        ) from None
    if not bands:
        raise OptionError("--bands is empty")
    return bands


def _open(path: Path) -> rasterio.DatasetReader:
    if not path.exists():
        raise InputError(f"scene not found: {path}")
    if path.is_dir():
        raise InputError(f"scene is a directory, not a raster: {path}")
    if not os.access(path, os.R_OK):
        raise InputError(f"scene is not readable (permission denied): {path}")
    try:
        return rasterio.open(path)
    except RasterioIOError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unknown format"
        raise InputError(f"{path} is not a readable raster ({first[:160]})") from exc


def _choose_bands(
    ds: rasterio.DatasetReader, model_bands: list[str], bands: list[int] | None
) -> tuple[list[int], list[str]]:
    n = len(model_bands)
    wanted = ", ".join(model_bands)
    if bands is not None:
        if len(bands) != n:
            raise OptionError(f"--bands gives {len(bands)} bands; the model needs {n} ({wanted})")
        bad = [b for b in bands if not 1 <= b <= ds.count]
        if bad:
            raise OptionError(f"--bands {bad[0]} is out of range: the scene has {ds.count} bands")
        return list(bands), []
    interp = list(ds.colorinterp)
    usable = [i + 1 for i, ci in enumerate(interp) if ci != ColorInterp.alpha]
    if len(usable) < n:
        raise InputError(
            f"scene has {len(usable)} band(s) and the model needs {n} ({wanted}); "
            "use a scene with those bands"
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
        "(pass --bands to choose others)"
    )
    return chosen, [note]


def _check_dtype(dtype: str) -> None:
    # Hook for other dtypes: scaling uint16/float data to 0..255 goes here.
    if dtype != "uint8":
        raise InputError(
            f"{dtype} data: scaling not supported yet; convert the scene to 8-bit "
            "(e.g. gdal_translate -ot Byte -scale)"
        )


def open_scene(
    path: str | os.PathLike[str], model_bands: list[str], bands: list[int] | None = None
) -> SceneInfo:
    """Open ``path``, check it can be classified with a model taking ``model_bands``.

    Args:
        model_bands: band names the model expects (``meta.bands``), in order.
        bands: 1-based scene bands to use (``--bands``); default: as many bands as
            the model needs, picked as red/green/blue by colour interpretation when
            the scene has more bands and says which is which, else the first ones
            (alpha bands are never picked).

    Raises:
        InputError: missing, not a raster, corrupt, no CRS, too few bands, not uint8.
        OptionError: ``bands`` of the wrong length or out of range.
    """
    path = Path(path)
    ds = _open(path)
    with ds:
        if ds.crs is None:
            raise InputError(
                f"{path} has no CRS: outputs could not be placed on a map "
                "(assign one, e.g. gdal_edit.py -a_srs EPSG:xxxx)"
            )
        band_indexes, warnings = _choose_bands(ds, model_bands, bands)
        dtypes = {ds.dtypes[b - 1] for b in band_indexes}
        dtype = dtypes.pop() if len(dtypes) == 1 else "mixed"
        _check_dtype(dtype)
        flags = [ds.mask_flag_enums[b - 1] for b in band_indexes]
        from_value = ds.nodata is not None and all(f == [MaskFlags.nodata] for f in flags)
        try:  # a truncated or corrupt file often opens but fails on its first read
            ds.read(band_indexes[0], window=Window(0, 0, 1, 1))
        except RasterioError as exc:
            raise InputError(f"{path} is corrupt or unreadable ({str(exc)[:160]})") from exc
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
        )


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


class TileReader:
    """Reads tiles of one scene; safe to share between threads.

    Each thread gets its own rasterio dataset handle (GDAL handles are not
    thread-safe); :meth:`close` closes them all.
    """

    def __init__(self, info: SceneInfo, tile_size: int) -> None:
        self.info = info
        self.tile_size = tile_size
        self._local = threading.local()
        self._handles: list[rasterio.DatasetReader] = []
        self._lock = threading.Lock()

    def _dataset(self) -> rasterio.DatasetReader:
        ds = getattr(self._local, "ds", None)
        if ds is None:
            ds = rasterio.open(self.info.path)
            self._local.ds = ds
            with self._lock:
                self._handles.append(ds)
        return ds

    def valid_mask(self, window: Window) -> np.ndarray:
        """(height, width) bool validity of the chosen bands inside ``window``."""
        ds = self._dataset()
        masks = ds.read_masks(self.info.band_indexes, window=window)
        return masks.any(axis=0)

    def read(self, tile: Tile) -> TilePixels:
        """Read ``tile``'s window and validity; skip-ready when nothing is valid."""
        info, window = self.info, tile.window
        ds = self._dataset()
        try:
            data = ds.read(info.band_indexes, window=window)
            if info.nodata_from_value:
                valid = (data != info.nodata).any(axis=0)
            else:
                valid = ds.read_masks(info.band_indexes, window=window).any(axis=0)
        except RasterioError as exc:
            raise InputError(
                f"{info.path}: cannot read tile row {tile.row} col {tile.col} "
                f"(corrupt file?): {str(exc)[:160]}"
            ) from exc
        n_valid = int(valid.sum())
        fraction = 1.0 - n_valid / valid.size
        if n_valid == 0:
            return TilePixels(tile, None, None, 1.0)
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
