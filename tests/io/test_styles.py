"""Class colours and QGIS QML styles."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from mscn_geo.io.styles import (
    UC_MERCED_COLOURS,
    class_colours,
    polygon_style_qml,
    raster_style_qml,
)

UC_MERCED = [
    "agricultural", "airplane", "baseballdiamond", "beach", "buildings", "chaparral",
    "denseresidential", "forest", "freeway", "golfcourse", "harbor", "intersection",
    "mediumresidential", "mobilehomepark", "overpass", "parkinglot", "river", "runway",
    "sparseresidential", "storagetanks", "tenniscourt",
]  # fmt: skip


def _rgb(text: str) -> tuple[int, int, int]:
    if text.startswith("#"):
        return int(text[1:3], 16), int(text[3:5], 16), int(text[5:7], 16)
    r, g, b, *_ = (int(v) for v in text.split(","))
    return r, g, b


def test_uc_merced_colours_are_fixed_distinct_and_land_use_like() -> None:
    colours = class_colours(UC_MERCED)
    assert len(set(colours)) == 21
    assert dict(zip(UC_MERCED, colours, strict=True)) == UC_MERCED_COLOURS
    # Independent of order and of the other classes present.
    assert class_colours(["river", "forest"]) == [
        UC_MERCED_COLOURS["river"],
        UC_MERCED_COLOURS["forest"],
    ]
    r, g, b = UC_MERCED_COLOURS["forest"]
    assert g > r and g > b and g < 160  # dark green
    r, g, b = UC_MERCED_COLOURS["river"]
    assert b > r and b > g  # blue
    r, g, b = UC_MERCED_COLOURS["denseresidential"]
    assert r > 180 and g < 100 and b < 100  # red


@pytest.mark.parametrize("count", [1, 3, 20, 21, 60])
def test_other_names_get_distinct_deterministic_colours(count: int) -> None:
    names = [f"class_{i}" for i in range(count)]
    colours = class_colours(names)
    assert len(colours) == count
    assert len(set(colours)) == count
    assert colours == class_colours(names)
    assert all(len(c) == 3 and all(0 <= v <= 255 for v in c) for c in colours)


def test_mixed_names_stay_distinct() -> None:
    names = ["forest", "water", "urban", *UC_MERCED[:5]]
    colours = class_colours(names)
    assert len(set(colours)) == len(names)
    assert colours[0] == UC_MERCED_COLOURS["forest"]
    assert colours[1] == (255, 127, 14)  # the palette colour at its position (1)


def test_duplicate_names_rejected() -> None:
    with pytest.raises(ValueError, match="unique"):
        class_colours(["a", "a"])


def test_polygon_qml_has_one_category_per_class_with_its_colour() -> None:
    names = ["forest", "river", "urban"]
    colours = class_colours(names)
    root = ET.fromstring(polygon_style_qml(names, colours))
    renderer = root.find("renderer-v2")
    assert renderer is not None
    assert renderer.get("type") == "categorizedSymbol"
    assert renderer.get("attr") == "class_name"
    categories = renderer.findall("categories/category")
    assert [(c.get("value"), c.get("label")) for c in categories] == [(n, n) for n in names]
    symbols = {s.get("name"): s for s in renderer.findall("symbols/symbol")}
    assert len(symbols) == 3
    for category, colour in zip(categories, colours, strict=True):
        symbol = symbols[category.get("symbol")]
        assert symbol.get("type") == "fill"
        option = symbol.find("layer/Option/Option[@name='color']")
        assert option is not None
        assert _rgb(option.get("value", "")) == colour
        prop = symbol.find("layer/prop[@k='color']")
        assert prop is not None
        assert _rgb(prop.get("v", "")) == colour


def test_polygon_qml_by_class_id() -> None:
    root = ET.fromstring(polygon_style_qml(["a", "b"], [(1, 2, 3), (4, 5, 6)], field="class_id"))
    categories = root.findall("renderer-v2/categories/category")
    assert [(c.get("value"), c.get("label")) for c in categories] == [("0", "a"), ("1", "b")]


def test_raster_qml_is_paletted_with_labels() -> None:
    names = ["forest", "river"]
    root = ET.fromstring(raster_style_qml(names, [(26, 100, 40), (66, 146, 219)]))
    renderer = root.find("pipe/rasterrenderer")
    assert renderer is not None
    assert renderer.get("type") == "paletted"
    assert renderer.get("band") == "1"
    entries = renderer.findall("colorPalette/paletteEntry")
    assert [(e.get("value"), e.get("label"), e.get("color")) for e in entries] == [
        ("0", "forest", "#1a6428"),
        ("1", "river", "#4292db"),
    ]


def test_names_needing_escape_survive() -> None:
    names = ['a<b & "c"', "d"]
    root = ET.fromstring(polygon_style_qml(names, class_colours(names)))
    assert [c.get("label") for c in root.iter("category")] == names


def test_mismatched_lengths_rejected() -> None:
    with pytest.raises(ValueError, match="2 class names but 1 colours"):
        polygon_style_qml(["a", "b"], [(1, 2, 3)])
