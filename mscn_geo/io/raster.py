"""The class raster: one uint8 band on the scene's pixel grid, written window by window."""

from __future__ import annotations

import math
import os
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import affine
import numpy as np
import rasterio
from rasterio.enums import ColorInterp, Resampling
from rasterio.errors import NotGeoreferencedWarning
from rasterio.windows import Window

from mscn_geo.io.atomic import PAM_SUFFIX, style_sidecar
from mscn_geo.io.styles import raster_style_qml

__all__ = ["BLOCK_SIZE", "ClassRasterWriter", "overview_factors", "write_category_names"]

#: Tile size of the GeoTIFF blocks, in pixels.
BLOCK_SIZE = 512
# Overviews stop once the coarsest level fits in about one display tile.
_SMALLEST_OVERVIEW = 256


def overview_factors(width: int, height: int) -> list[int]:
    """Decimation factors 2, 4, 8... until the coarsest level is at most 256 px on its long side.

    Always at least one level (factor 2) for rasters of 2 px or more, so every
    output has overviews.
    """
    longest = max(width, height)
    if min(width, height) < 2:
        return []
    factors = [2]
    while (
        math.ceil(longest / factors[-1]) > _SMALLEST_OVERVIEW
        and min(width, height) // (factors[-1] * 2) >= 1
    ):
        factors.append(factors[-1] * 2)
    return factors


def write_category_names(path: Path, class_names: Sequence[str], band: int = 1) -> Path:
    """Store category names for ``band`` of the raster at ``path`` in its GDAL ``.aux.xml``.

    GeoTIFF has no tag for category names; GDAL keeps them only in this PAM
    sidecar (``<path>.aux.xml``), where GDAL tools and QGIS read them. Other
    content of an existing sidecar is kept. Returns the sidecar path.
    """
    sidecar = Path(path).with_name(Path(path).name + PAM_SUFFIX)
    root = ET.parse(sidecar).getroot() if sidecar.exists() else ET.Element("PAMDataset")
    band_element = next(
        (e for e in root.findall("PAMRasterBand") if e.get("band") == str(band)), None
    )
    if band_element is None:
        band_element = ET.SubElement(root, "PAMRasterBand", {"band": str(band)})
    for old in band_element.findall("CategoryNames"):
        band_element.remove(old)
    categories = ET.SubElement(band_element, "CategoryNames")
    for name in class_names:
        ET.SubElement(categories, "Category").text = str(name)
    ET.indent(root)
    sidecar.write_text(ET.tostring(root, encoding="unicode") + "\n", encoding="utf-8")
    return sidecar


class ClassRasterWriter:
    """Writes the class raster of one scene, window by window.

    A single-band uint8 GeoTIFF with exactly the scene's grid (``width`` x
    ``height`` pixels, ``transform``, ``crs``; ``crs`` may be None for a
    pixel-space output). Tiled 512 x 512, DEFLATE, ``BIGTIFF=IF_SAFER``. Every
    pixel not written reads ``nodata`` (255). On a clean exit the writer builds
    internal overviews (mode resampling: the most frequent class wins), sets a
    colour table (class ``i`` -> ``colours[i]``), the band description
    ``class_id`` and the category names, which GDAL keeps in the ``<path>.aux.xml``
    sidecar (see :func:`write_category_names`), and with ``qgis_style`` writes the
    QGIS default style ``<path stem>.qml`` (a paletted legend with exactly the
    classes; from the colour table alone QGIS would list all 256 entries). Only
    one window's data is held in memory at a time.

    Use as a context manager; on an exception the file is closed as it is and
    left to the caller (:func:`mscn_geo.io.atomic_outputs`) to delete.
    """

    def __init__(
        self,
        path: Path,
        *,
        width: int,
        height: int,
        crs: Any,
        transform: affine.Affine,
        class_names: Sequence[str],
        colours: Sequence[tuple[int, int, int]],
        nodata: int = 255,
        resampling: Resampling = Resampling.mode,
        qgis_style: bool = True,
    ) -> None:
        if width < 1 or height < 1:
            raise ValueError(f"raster size must be positive, got {width} x {height}")
        if len(class_names) != len(colours):
            raise ValueError(f"{len(class_names)} class names but {len(colours)} colours")
        if not 0 <= nodata <= 255:
            raise ValueError(f"nodata must fit in uint8, got {nodata}")
        if len(class_names) > nodata:
            raise ValueError(f"{len(class_names)} classes do not fit below nodata {nodata}")
        self.path = Path(path)
        self.width = int(width)
        self.height = int(height)
        self.class_names = [str(name) for name in class_names]
        self.colours = [tuple(int(c) for c in colour[:3]) for colour in colours]
        self.nodata = int(nodata)
        self.resampling = resampling
        self.qgis_style = qgis_style
        profile: dict[str, Any] = {
            "driver": "GTiff",
            "width": self.width,
            "height": self.height,
            "count": 1,
            "dtype": "uint8",
            "nodata": self.nodata,
            "transform": transform,
            "tiled": True,
            "blockxsize": BLOCK_SIZE,
            "blockysize": BLOCK_SIZE,
            "compress": "deflate",
            "predictor": 1,
            "bigtiff": "IF_SAFER",
            "interleave": "band",
            "photometric": "palette",
        }
        with warnings.catch_warnings():
            if crs is None:
                # A pixel-space output is what the caller asked for.
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
            else:
                profile["crs"] = crs
            self._dataset = rasterio.open(self.path, "w", **profile)
        # The colour table goes in at creation so PHOTOMETRIC=PALETTE is valid
        # from the first block on.
        self._dataset.write_colormap(1, self._colormap())

    def _colormap(self) -> dict[int, tuple[int, int, int, int]]:
        colormap = {value: (0, 0, 0, 0) for value in range(256)}
        for value, colour in enumerate(self.colours):
            colormap[value] = (*colour, 255)
        return colormap

    @property
    def closed(self) -> bool:
        return self._dataset.closed

    def write(self, window: Window, data: np.ndarray) -> None:
        """Write class ids ``data`` (uint8, shape ``(window.height, window.width)``) at ``window``.

        Values must be class ids (``0 .. len(class_names) - 1``) or ``nodata``.
        """
        if self._dataset.closed:
            raise ValueError(f"{self.path} is closed")
        data = np.asarray(data)
        if data.dtype != np.uint8:
            raise ValueError(f"class data must be uint8, got {data.dtype}")
        window = Window(
            *(int(v) for v in (window.col_off, window.row_off, window.width, window.height))
        )
        if data.shape != (window.height, window.width):
            raise ValueError(f"data shape {data.shape} does not match window {window}")
        if (
            window.col_off < 0
            or window.row_off < 0
            or window.col_off + window.width > self.width
            or window.row_off + window.height > self.height
        ):
            raise ValueError(f"window {window} is outside the {self.width} x {self.height} raster")
        if data.size:
            invalid = (data >= len(self.class_names)) & (data != self.nodata)
            if invalid.any():
                bad = int(data[invalid][0])
                raise ValueError(f"class id {bad} is not a class (0..{len(self.class_names) - 1})")
        self._dataset.write(data, 1, window=window)

    def close(self) -> None:
        """Finish the file: overviews, colour table, description, category names."""
        if self._dataset.closed:
            return
        try:
            factors = overview_factors(self.width, self.height)
            if factors:
                self._dataset.build_overviews(factors, self.resampling)
                self._dataset.update_tags(ns="rio_overview", resampling=self.resampling.name)
            self._dataset.colorinterp = [ColorInterp.palette]
            self._dataset.set_band_description(1, "class_id")
        finally:
            self._dataset.close()
        write_category_names(self.path, self.class_names)
        if self.qgis_style:
            style_sidecar(self.path).write_text(
                raster_style_qml(self.class_names, self.colours), encoding="utf-8"
            )

    def abort(self) -> None:
        """Close without finishing (the caller discards the file)."""
        if not self._dataset.closed:
            self._dataset.close()

    def __enter__(self) -> ClassRasterWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<ClassRasterWriter {os.fspath(self.path)!r} {self.width}x{self.height} {state}>"
