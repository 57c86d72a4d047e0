"""The quicklook: a small PNG of the scene with the class map blended over it and a legend.

Both the scene and the class raster are read decimated (``out_shape``) to at
most :data:`MAX_SIDE` pixels on the long side; GDAL serves such reads from the
files' overviews, so a 30,000 px scene costs about as much as a 2,048 px one.
Without overviews the same read still works but decodes every pixel once
(slow; :func:`render_quicklook` says so in its warnings).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rasterio
from PIL import Image, ImageDraw, ImageFont
from rasterio.enums import Resampling

from mscn_geo.io.decimated import read_decimated
from mscn_geo.io.styles import class_values
from mscn_geo.reader import SceneInfo, to_model_range, validity
from mscn_geo.remote import scene_name

__all__ = [
    "LEGEND_WIDTH",
    "MAX_SIDE",
    "Quicklook",
    "legend_rows",
    "quicklook_shape",
    "render_quicklook",
    "swatch_box",
]

#: Longest side of the map part of the picture, in pixels.
MAX_SIDE = 2048
#: Width of the legend panel right of the map, in pixels.
LEGEND_WIDTH = 300
#: Opacity of the class colours over the scene.
ALPHA = 0.45

# Legend layout (pixels): margin, title height, row height, colour swatch side.
_MARGIN = 14
_TITLE = 30
_ROW = 24
_SWATCH = 16
_BACKGROUND = (255, 255, 255)
_NO_SCENE = (235, 235, 235)  # where the scene itself is nodata


@dataclass
class Quicklook:
    """A rendered quicklook: the picture and what a caller should know about it."""

    image: Image.Image
    map_size: tuple[int, int]  # (width, height) of the map part
    warnings: list[str] = field(default_factory=list)

    def save(self, path: Path) -> None:
        self.image.save(path, format="PNG")


def quicklook_shape(width: int, height: int, max_side: int = MAX_SIDE) -> tuple[int, int]:
    """(height, width) of the map part: the scene scaled to at most ``max_side``, never enlarged."""
    factor = max(1.0, max(width, height) / max_side)
    return max(1, round(height / factor)), max(1, round(width / factor))


def legend_rows(
    class_names: Sequence[str], shares: Sequence[float] | None
) -> list[tuple[int, str]]:
    """(class position, label) of the legend rows: classes present, largest share first.

    Without shares every class is listed in order.
    """
    if shares is None:
        return [(i, str(name)) for i, name in enumerate(class_names)]
    present = [i for i, share in enumerate(shares) if share > 0]
    present.sort(key=lambda i: (-shares[i], i))
    return [(i, f"{class_names[i]}  {100 * shares[i]:.1f} %") for i in present]


def _scene_rgb(info: SceneInfo, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, bool]:
    """(h, w, 3) uint8 scene colours, (h, w) validity, and whether overviews served the read."""
    bands = list(info.band_indexes)
    with rasterio.open(info.path) as ds:
        has_overviews = bool(ds.overviews(bands[0])) or max(ds.width, ds.height) <= max(shape)
    data = read_decimated(info.path, bands, shape, Resampling.average)
    masks = None
    if not info.nodata_from_value:
        masks = read_decimated(info.path, bands, shape, Resampling.nearest, masks=True)
    valid = validity(info, data, masks)
    pixels = to_model_range(info, data)
    if pixels.dtype != np.uint8:
        pixels = np.clip(pixels, 0, 255).astype(np.uint8)
    # Model bands other than three: the first three, or the first one as grey.
    rgb = pixels[:3] if len(bands) >= 3 else np.repeat(pixels[:1], 3, axis=0)
    return np.moveaxis(rgb, 0, -1), valid, has_overviews


def _classes(path: Path, shape: tuple[int, int]) -> np.ndarray:
    with rasterio.open(path) as ds:
        # Nearest on the mode-resampled overviews: each output pixel one real class.
        return ds.read(1, out_shape=shape, resampling=Resampling.nearest)


def render_quicklook(
    info: SceneInfo,
    class_raster: Path,
    class_names: Sequence[str],
    colours: Sequence[tuple[int, int, int]],
    shares: Sequence[float] | None = None,
    *,
    values: Sequence[int] | None = None,
    max_side: int = MAX_SIDE,
    title: str | None = None,
) -> Quicklook:
    """Render the scene with its class map and a legend.

    Args:
        info: the scene (its bands and scaling are what the model saw).
        class_raster: the class raster written for it (same pixel grid).
        class_names, colours: class ``i`` is drawn in ``colours[i]``; other
            raster values (nodata, outside the area of interest) show the scene
            faded.
        shares: share of the valid area per class (0..1), listed in the legend;
            ``None``: the legend lists every class without shares.
        values: the raster value of each class (default ``0, 1, ...``).
        max_side: longest side of the map part in pixels.
        title: legend title (default: the scene's file name).

    Returns:
        A :class:`Quicklook` of ``(map width + LEGEND_WIDTH) x max(map height,
        legend height)`` pixels, RGB; the map is at the top left.
    """
    if len(colours) != len(class_names):
        raise ValueError(f"{len(class_names)} class names but {len(colours)} colours")
    shape = quicklook_shape(info.width, info.height, max_side)
    rgb, valid, has_overviews = _scene_rgb(info, shape)
    classes = _classes(class_raster, shape)
    warnings = []
    if not has_overviews:
        warnings.append(
            f"{scene_name(info.path)} has no overviews: the quicklook read every pixel "
            "(add overviews, e.g. gdaladdo, to make it fast)"
        )
    values = class_values(class_names, values)
    # Each output colour depends only on (class, scene level, channel): a lookup
    # table of 256 levels per class gives it, instead of float maths per pixel.
    slot = np.full(256, len(values), dtype=np.intp)  # raster value -> table row
    slot[values] = np.arange(len(values))
    levels = np.arange(256, dtype=np.float32)[:, None]
    blended = (1 - ALPHA) * levels[None] + ALPHA * np.asarray(colours, np.float32)[:, None, :]
    # Not classified: the scene faded towards white, so the map stands out.
    faded = np.broadcast_to(0.5 * levels + 0.5 * 255, (1, 256, 3))
    table = np.rint(np.concatenate([blended, faded])).astype(np.uint8)  # (classes + 1, 256, 3)
    slots = slot[classes]
    picture = table[slots[..., None], rgb, np.arange(3)]
    picture[~valid & (slots == len(values))] = _NO_SCENE
    map_image = Image.fromarray(picture, "RGB")

    rows = legend_rows(class_names, shares)
    legend_height = 2 * _MARGIN + _TITLE + _ROW * len(rows)
    height = max(shape[0], legend_height)
    image = Image.new("RGB", (shape[1] + LEGEND_WIDTH, height), _BACKGROUND)
    image.paste(map_image, (0, 0))
    _draw_legend(image, shape[1], rows, colours, title or scene_name(info.path))
    return Quicklook(image, (shape[1], shape[0]), warnings)


def swatch_box(map_width: int, row: int) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) of the colour swatch of legend row ``row`` (x1, y1 exclusive)."""
    x0 = map_width + _MARGIN
    y0 = _MARGIN + _TITLE + row * _ROW + (_ROW - _SWATCH) // 2
    return x0, y0, x0 + _SWATCH, y0 + _SWATCH


def _draw_legend(
    image: Image.Image,
    map_width: int,
    rows: list[tuple[int, str]],
    colours: Sequence[tuple[int, int, int]],
    title: str,
) -> None:
    draw = ImageDraw.Draw(image)
    title_font = ImageFont.load_default(size=16)
    font = ImageFont.load_default(size=14)
    x = map_width + _MARGIN
    draw.text((x, _MARGIN), _fit(draw, title, title_font), fill=(0, 0, 0), font=title_font)
    for row, (class_id, label) in enumerate(rows):
        x0, y0, x1, y1 = swatch_box(map_width, row)
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=tuple(colours[class_id]))
        draw.text((x1 + 8, y0 - 1), _fit(draw, label, font), fill=(0, 0, 0), font=font)


def _fit(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.FreeTypeFont) -> str:
    # Long scene or class names are cut so they stay inside the legend panel.
    room = LEGEND_WIDTH - 2 * _MARGIN - _SWATCH - 8
    while len(text) > 4 and draw.textlength(text, font=font) > room:
        text = text[:-4] + "..."
    return text
