"""Scaling non-8-bit scenes (uint16, int16, float32...) to the model's 0..255 input.

The model was trained on 8-bit imagery, so every other data type is mapped
linearly per band from ``[low, high]`` to ``[0, 255]`` (values outside are
clipped; NaN becomes 0, and its pixel is nodata anyway):

* default: ``low``/``high`` are the 2nd and 98th percentiles of each band's
  valid pixels, estimated from the overviews when the file has them, else from
  a fixed grid of windows spread over the scene (never the whole scene), so the
  same file always gives the same stretch and every tile of a scene gets the
  same one;
* ``--scale MIN,MAX``: the same ``low``/``high`` for every band (e.g.
  ``0,4095`` for 12-bit data, ``0,1`` for reflectance).

uint8 scenes are used as they are unless ``--scale`` is given.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import rasterio
from rasterio.windows import Window

from mscn_geo.errors import OptionError

__all__ = ["PERCENTILES", "Scaling", "estimate_percentiles", "parse_scale"]

#: Low and high percentiles of the default stretch.
PERCENTILES = (2.0, 98.0)
# Longest side of the overview read for the estimate, and the sample grid used
# when there is no overview: SAMPLE_GRID x SAMPLE_GRID windows of SAMPLE_WINDOW px.
_OVERVIEW_SIDE = 1024
_SAMPLE_GRID = 8
_SAMPLE_WINDOW = 128


@dataclass(frozen=True)
class Scaling:
    """A per-band linear map ``[low, high] -> [0, 255]``.

    Attributes:
        method: ``"percentile"`` (estimated per scene), ``"fixed"`` (``--scale``)
            or ``"training"`` (per band, fixed, from a model's training chips).
        low, high: one value per band used, in the scene's units.
    """

    method: str
    low: tuple[float, ...]
    high: tuple[float, ...]

    def apply(self, data: np.ndarray) -> np.ndarray:
        """(bands, h, w) any numeric dtype -> (bands, h, w) uint8; NaN -> 0."""
        low = np.asarray(self.low, dtype=np.float64).reshape(-1, 1, 1)
        span = np.asarray(self.high, dtype=np.float64).reshape(-1, 1, 1) - low
        scaled = (data.astype(np.float64) - low) * (255.0 / span)
        np.nan_to_num(scaled, copy=False, nan=0.0, posinf=255.0, neginf=0.0)
        return np.rint(np.clip(scaled, 0.0, 255.0)).astype(np.uint8)

    def describe(self) -> str:
        pairs = ", ".join(f"{lo:g}..{hi:g}" for lo, hi in zip(self.low, self.high, strict=True))
        if self.method == "fixed":
            return f"linear {pairs} -> 0..255 (given MIN,MAX)"
        if self.method == "training":
            return f"the model's training stretch {pairs} -> 0..255"
        lo, hi = PERCENTILES
        return f"per-band {lo:g}-{hi:g} percentile stretch {pairs} -> 0..255"

    def to_dict(self) -> dict[str, object]:
        return {"method": self.method, "low": list(self.low), "high": list(self.high)}

    @classmethod
    def from_dict(cls, raw: dict[str, object]) -> Scaling:
        """The inverse of :meth:`to_dict` (as stored in checkpoints and chips.json)."""
        low = tuple(float(v) for v in raw["low"])  # type: ignore[union-attr]
        high = tuple(float(v) for v in raw["high"])  # type: ignore[union-attr]
        if len(low) != len(high):
            raise ValueError("scaling low and high differ in length")
        return cls(str(raw["method"]), low, high)


def parse_scale(text: str | Sequence[float] | None) -> tuple[float, float] | None:
    """``"0,4095"`` -> ``(0.0, 4095.0)``; ``None`` stays ``None``."""
    if text is None:
        return None
    if isinstance(text, str):
        parts = [p for p in text.replace(" ", "").split(",") if p]
        try:
            values = [float(p) for p in parts]
        except ValueError:
            values = []
    else:
        values = [float(v) for v in text]
    if len(values) != 2 or not all(math.isfinite(v) for v in values):
        raise OptionError(f"scale must be MIN,MAX (two numbers), got {text!r}", field="scale")
    low, high = values
    if high <= low:
        raise OptionError(f"scale MIN,MAX needs MIN < MAX, got {low:g},{high:g}", field="scale")
    return low, high


def fixed_scaling(bounds: tuple[float, float], bands: int) -> Scaling:
    low, high = bounds
    return Scaling("fixed", (low,) * bands, (high,) * bands)


def _sample(ds: rasterio.DatasetReader, bands: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """(bands, n) values and (n,) validity from overviews or a grid of windows."""
    if ds.overviews(bands[0]) or max(ds.width, ds.height) <= _OVERVIEW_SIDE:
        # A decimated read is served from the overviews (or is the small scene).
        factor = max(1.0, max(ds.width, ds.height) / _OVERVIEW_SIDE)
        shape = (max(1, round(ds.height / factor)), max(1, round(ds.width / factor)))
        data = ds.read(bands, out_shape=(len(bands), *shape))
        masks = ds.read_masks(bands, out_shape=(len(bands), *shape))
        return data.reshape(len(bands), -1), masks.all(axis=0).reshape(-1)
    size = min(_SAMPLE_WINDOW, ds.width, ds.height)
    datas, valids = [], []
    for i in range(_SAMPLE_GRID):
        for j in range(_SAMPLE_GRID):
            x = round(j * (ds.width - size) / (_SAMPLE_GRID - 1))
            y = round(i * (ds.height - size) / (_SAMPLE_GRID - 1))
            window = Window(x, y, size, size)
            datas.append(ds.read(bands, window=window).reshape(len(bands), -1))
            valids.append(ds.read_masks(bands, window=window).all(axis=0).reshape(-1))
    return np.concatenate(datas, axis=1), np.concatenate(valids)


def estimate_percentiles(
    ds: rasterio.DatasetReader, bands: list[int], nodata: float | None
) -> Scaling:
    """The default stretch of ``bands`` of the open dataset ``ds`` (see module doc).

    Pixels that are masked, equal ``nodata`` or not finite are left out.
    """
    data, valid = _sample(ds, bands)
    valid = valid & np.isfinite(data).all(axis=0)
    if nodata is not None and not math.isnan(nodata):
        valid &= (data != nodata).any(axis=0)
    lows, highs = [], []
    lo_q, hi_q = PERCENTILES
    for band in data:
        values = band[valid].astype(np.float64)
        if values.size == 0:  # all nodata: nothing will be classified anyway
            low, high = 0.0, 1.0
        else:
            low, high = (float(v) for v in np.percentile(values, [lo_q, hi_q]))
        if not high > low:
            high = low + 1.0
        lows.append(low)
        highs.append(high)
    return Scaling("percentile", tuple(lows), tuple(highs))
