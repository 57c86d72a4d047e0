"""Class colours and QGIS styles (QML) for the outputs.

The QML documents follow what QGIS 3.22 itself writes for a categorised fill
renderer and a paletted raster renderer; both old (``<prop>``) and new
(``<Option>``) symbol-layer properties are written so older and newer QGIS
versions read the same style.
"""

from __future__ import annotations

import colorsys
import xml.etree.ElementTree as ET
from collections.abc import Sequence

__all__ = [
    "UC_MERCED_COLOURS",
    "class_colours",
    "class_values",
    "polygon_style_qml",
    "raster_style_qml",
]

RGB = tuple[int, int, int]

#: Fixed land-use colours for the 21 UC Merced classes: vegetation greens,
#: water blues, sand, residential oranges/reds, paved greys.
UC_MERCED_COLOURS: dict[str, RGB] = {
    "agricultural": (227, 209, 112),
    "airplane": (158, 154, 200),
    "baseballdiamond": (191, 129, 45),
    "beach": (246, 232, 195),
    "buildings": (165, 0, 38),
    "chaparral": (166, 180, 96),
    "denseresidential": (215, 48, 39),
    "forest": (26, 100, 40),
    "freeway": (82, 82, 82),
    "golfcourse": (127, 205, 90),
    "harbor": (33, 80, 150),
    "intersection": (150, 150, 150),
    "mediumresidential": (244, 109, 67),
    "mobilehomepark": (231, 138, 195),
    "overpass": (115, 99, 128),
    "parkinglot": (204, 204, 204),
    "river": (66, 146, 219),
    "runway": (45, 45, 55),
    "sparseresidential": (253, 174, 97),
    "storagetanks": (106, 61, 154),
    "tenniscourt": (0, 158, 150),
}

# Colours for other class names, taken by position (matplotlib's tab20 order).
_PALETTE: tuple[RGB, ...] = (
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
    (174, 199, 232),
    (255, 187, 120),
    (152, 223, 138),
    (255, 152, 150),
    (197, 176, 213),
    (196, 156, 148),
    (247, 182, 210),
    (199, 199, 199),
    (219, 219, 141),
    (158, 218, 229),
)

_QGIS_VERSION = "3.22.0-Białowieża"


def _generated_colour(index: int) -> RGB:
    # Golden-ratio hue steps stay well apart for any number of classes.
    hue = (0.13 + index * 0.618033988749895) % 1.0
    saturation = (0.55, 0.75, 0.95)[index % 3]
    value = (0.95, 0.75, 0.55)[(index // 3) % 3]
    r, g, b = colorsys.hsv_to_rgb(hue, saturation, value)
    return round(r * 255), round(g * 255), round(b * 255)


def class_colours(class_names: Sequence[str]) -> list[RGB]:
    """One distinct RGB colour (0..255 each) per class, deterministic.

    UC Merced class names get their fixed colour in :data:`UC_MERCED_COLOURS`;
    any other name gets the palette colour at its position, skipping colours
    already in use, then generated colours once the palette runs out.
    """
    names = list(class_names)
    if len(set(names)) != len(names):
        raise ValueError(f"class names must be unique: {names}")
    colours: list[RGB | None] = [UC_MERCED_COLOURS.get(name) for name in names]
    used = {colour for colour in colours if colour is not None}
    candidates = [*_PALETTE]
    generated = 0
    for position, colour in enumerate(colours):
        if colour is not None:
            continue
        # Prefer the palette entry of this position so a model's colours do not
        # shift when an unrelated class is renamed.
        ordered = (
            candidates[position % len(candidates) :] + candidates[: position % len(candidates)]
        )
        choice = next((c for c in ordered if c not in used), None)
        while choice is None or choice in used:
            choice = _generated_colour(generated)
            generated += 1
        colours[position] = choice
        used.add(choice)
    return [colour for colour in colours if colour is not None]


def class_values(class_names: Sequence[str], values: Sequence[int] | None = None) -> list[int]:
    """The raster value of each class: ``values`` checked, or ``0, 1, ...`` by default.

    Classes beyond the model's (such as ``uncertain``) have their own value.
    """
    if values is None:
        return list(range(len(class_names)))
    if len(values) != len(class_names):
        raise ValueError(f"{len(class_names)} class names but {len(values)} values")
    return [int(v) for v in values]


def _check(class_names: Sequence[str], colours: Sequence[Sequence[int]]) -> None:
    if len(class_names) != len(colours):
        raise ValueError(f"{len(class_names)} class names but {len(colours)} colours")


def _rgba(colour: Sequence[int], alpha: int = 255) -> str:
    r, g, b = (int(c) for c in colour[:3])
    return f"{r},{g},{b},{alpha}"


def _hex(colour: Sequence[int]) -> str:
    r, g, b = (int(c) for c in colour[:3])
    return f"#{r:02x}{g:02x}{b:02x}"


def _document(root: ET.Element) -> str:
    ET.indent(root)
    body = ET.tostring(root, encoding="unicode")
    return "<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n" + body + "\n"


def _fill_symbol(parent: ET.Element, name: str, colour: Sequence[int]) -> None:
    symbol = ET.SubElement(
        parent,
        "symbol",
        {
            "type": "fill",
            "name": name,
            "alpha": "1",
            "clip_to_extent": "1",
            "force_rhr": "0",
        },
    )
    layer = ET.SubElement(
        symbol, "layer", {"class": "SimpleFill", "enabled": "1", "locked": "0", "pass": "0"}
    )
    properties = {
        "border_width_map_unit_scale": "3x:0,0,0,0,0,0",
        "color": _rgba(colour),
        "joinstyle": "bevel",
        "offset": "0,0",
        "offset_map_unit_scale": "3x:0,0,0,0,0,0",
        "offset_unit": "MM",
        # A thin darker outline keeps tile boundaries readable.
        "outline_color": "35,35,35,120",
        "outline_style": "solid",
        "outline_width": "0.1",
        "outline_width_unit": "MM",
        "style": "solid",
    }
    options = ET.SubElement(layer, "Option", {"type": "Map"})
    for key, value in properties.items():
        ET.SubElement(options, "Option", {"name": key, "type": "QString", "value": value})
    for key, value in properties.items():
        ET.SubElement(layer, "prop", {"k": key, "v": value})


def polygon_style_qml(
    class_names: Sequence[str],
    colours: Sequence[Sequence[int]],
    field: str = "class_name",
) -> str:
    """QGIS QML for the tiles layer: a ``categorizedSymbol`` renderer on ``field``.

    One category per class, value and label the class name (or the class id
    when ``field`` is ``'class_id'``), filled with the class colour.
    """
    _check(class_names, colours)
    by_id = field == "class_id"
    root = ET.Element(
        "qgis",
        {
            "version": _QGIS_VERSION,
            "styleCategories": "Symbology",
            "hasScaleBasedVisibilityFlag": "0",
        },
    )
    renderer = ET.SubElement(
        root,
        "renderer-v2",
        {
            "type": "categorizedSymbol",
            "attr": field,
            "forceraster": "0",
            "symbollevels": "0",
            "enableorderby": "0",
            "referencescale": "-1",
        },
    )
    categories = ET.SubElement(renderer, "categories")
    for index, name in enumerate(class_names):
        ET.SubElement(
            categories,
            "category",
            {
                "render": "true",
                "symbol": str(index),
                "value": str(index) if by_id else str(name),
                "label": str(name),
                "type": "integer" if by_id else "string",
            },
        )
    symbols = ET.SubElement(renderer, "symbols")
    for index, colour in enumerate(colours):
        _fill_symbol(symbols, str(index), colour)
    ET.SubElement(renderer, "rotation")
    ET.SubElement(renderer, "sizescale")
    ET.SubElement(root, "blendMode").text = "0"
    ET.SubElement(root, "featureBlendMode").text = "0"
    ET.SubElement(root, "layerOpacity").text = "1"
    ET.SubElement(root, "layerGeometryType").text = "2"  # polygon
    return _document(root)


def raster_style_qml(
    class_names: Sequence[str],
    colours: Sequence[Sequence[int]],
    values: Sequence[int] | None = None,
) -> str:
    """QGIS QML for the class raster: a ``paletted`` renderer, one labelled entry per class.

    ``values``: the raster value of each class (default: its position), e.g. to
    add the ``uncertain`` class at 254.
    """
    _check(class_names, colours)
    values = list(range(len(class_names))) if values is None else [int(v) for v in values]
    if len(values) != len(class_names):
        raise ValueError(f"{len(class_names)} class names but {len(values)} values")
    root = ET.Element(
        "qgis",
        {
            "version": _QGIS_VERSION,
            "styleCategories": "Symbology",
            "hasScaleBasedVisibilityFlag": "0",
        },
    )
    pipe = ET.SubElement(root, "pipe")
    renderer = ET.SubElement(
        pipe,
        "rasterrenderer",
        {"type": "paletted", "band": "1", "opacity": "1", "alphaBand": "-1", "nodataColor": ""},
    )
    ET.SubElement(renderer, "rasterTransparency")
    palette = ET.SubElement(renderer, "colorPalette")
    for value, name, colour in zip(values, class_names, colours, strict=True):
        ET.SubElement(
            palette,
            "paletteEntry",
            {"value": str(value), "color": _hex(colour), "alpha": "255", "label": str(name)},
        )
    ET.SubElement(root, "blendMode").text = "0"
    return _document(root)
