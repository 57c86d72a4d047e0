"""``--stac``: the STAC Item of a scene's outputs, checked field by field and validated offline."""

from __future__ import annotations

import json

import jsonschema
import pystac
import pytest
import rasterio
from mscn_geo_cli.main import main
from pystac.extensions.classification import ClassificationExtension
from pystac.extensions.projection import ProjectionExtension
from pystac.validation.stac_validator import JsonSchemaSTACValidator
from rasterio.warp import transform_bounds

from mscn_geo.io.styles import class_colours
from tests.conftest import TINY_CLASSES

# The fields the item must carry, as the projection v2.0.0 and classification
# v2.0.0 extension READMEs define them (their JSON schemas are not bundled with
# pystac and tests have no network; the core STAC schema below is pystac's own).
EXTENSION_FIELDS = {
    "type": "object",
    "required": ["properties", "assets"],
    "properties": {
        "properties": {
            "required": ["proj:code", "proj:shape", "proj:transform", "proj:bbox"],
            "properties": {
                "proj:code": {"type": ["string", "null"], "pattern": "^[A-Z]+:[0-9]+$"},
                "proj:shape": {"type": "array", "items": {"type": "integer"}, "minItems": 2},
                "proj:transform": {"type": "array", "items": {"type": "number"}, "minItems": 6},
                "proj:bbox": {"type": "array", "items": {"type": "number"}, "minItems": 4},
            },
        },
        "assets": {
            "additionalProperties": {
                "required": ["href", "type", "roles"],
                "properties": {
                    "classification:classes": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["value", "name"],
                            "properties": {
                                "value": {"type": "integer"},
                                "name": {"type": "string", "pattern": "^[0-9A-Za-z-_]+$"},
                                "color_hint": {"type": "string", "pattern": "^[0-9A-F]{6}$"},
                                "nodata": {"type": "boolean"},
                            },
                        },
                    }
                },
            }
        },
    },
}


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to read a schema (or anything) over the network fails the test."""

    def refuse(self, source, *args, **kwargs):
        if str(source).startswith(("http://", "https://")):
            raise AssertionError(f"network access attempted: {source}")
        return original(self, source, *args, **kwargs)

    original = pystac.stac_io.DefaultStacIO.read_text
    monkeypatch.setattr(pystac.stac_io.DefaultStacIO, "read_text", refuse)


def test_stac_item_of_outputs(make_scene, tiny_checkpoint, tmp_path, capsys, no_network):
    scene = make_scene(4 * 64, 3 * 64, nodata_cols=64)  # EPSG:32633, first tile column nodata
    out = tmp_path / "out"
    args = ["classify", str(scene), "-m", str(tiny_checkpoint), "-o", str(out), "--device", "cpu"]
    assert main([*args, "--stac", "--json", "--quiet"]) == 0
    summary = json.loads(capsys.readouterr().out)
    path = out / "scene.stac.json"
    assert summary["outputs"]["stac"] == str(path)
    data = json.loads(path.read_text())

    # Core STAC 1.1 Item schema, offline (pystac ships it); extension fields by their spec.
    JsonSchemaSTACValidator().validate_core(data, pystac.STACObjectType.ITEM, "1.1.0")
    jsonschema.validate(data, EXTENSION_FIELDS)
    assert ProjectionExtension.get_schema_uri() in data["stac_extensions"]
    assert ClassificationExtension.get_schema_uri() in data["stac_extensions"]

    with rasterio.open(scene) as ds:
        crs, transform, shape = ds.crs, ds.transform, [ds.height, ds.width]
        wgs84 = transform_bounds(crs, "EPSG:4326", *ds.bounds, densify_pts=64)
        bounds = list(ds.bounds)
    assert data["bbox"] == pytest.approx(list(wgs84), abs=1e-6)
    lons = [p[0] for p in data["geometry"]["coordinates"][0]]
    assert min(lons) == pytest.approx(wgs84[0], abs=1e-6)
    props = data["properties"]
    assert props["proj:code"] == "EPSG:32633"
    assert props["proj:shape"] == shape
    assert props["proj:transform"] == pytest.approx(list(transform)[:6])
    assert props["proj:bbox"] == pytest.approx(bounds)

    assets = data["assets"]
    assert set(assets) == {"tiles", "classes", "quicklook", "areas"}  # the outputs written
    assert assets["areas"]["href"] == "./scene_areas.csv" and assets["areas"]["type"] == "text/csv"
    assert assets["quicklook"]["href"] == "./scene_quicklook.png"
    assert assets["quicklook"]["type"] == "image/png"
    assert assets["tiles"]["href"] == "./scene.gpkg"
    assert assets["tiles"]["type"] == "application/geopackage+sqlite3"
    assert assets["classes"]["href"] == "./scene_classes.tif"
    assert assets["classes"]["type"] == "image/tiff; application=geotiff; profile=cloud-optimized"
    assert assets["classes"]["roles"] == ["data"]
    classes = assets["classes"]["classification:classes"]
    colours = ["".join(f"{c:02X}" for c in rgb) for rgb in class_colours(TINY_CLASSES)]
    assert [(c["value"], c["name"], c.get("color_hint")) for c in classes] == [
        *[(i, name, colours[i]) for i, name in enumerate(TINY_CLASSES)],
        (255, "nodata", None),
    ]
    assert classes[-1]["nodata"] is True

    # pystac reads it back, and every asset href resolves to an output file.
    item = pystac.Item.from_file(str(path))
    for asset in item.assets.values():
        assert (out / asset.href).resolve().is_file()
    with rasterio.open(out / "scene_classes.tif") as ds:
        values = {int(v) for v in set(ds.read(1).ravel())}
    assert values <= {c["value"] for c in classes}


def test_no_stac_without_flag_and_refused_when_it_exists(
    make_scene, tiny_checkpoint, tmp_path, capsys
):
    scene = make_scene(128, 128)
    out = tmp_path / "out"
    args = ["classify", str(scene), "-m", str(tiny_checkpoint), "-o", str(out), "--device", "cpu"]
    assert main([*args, "--quiet"]) == 0
    assert sorted(p.name for p in out.iterdir() if "stac" in p.name) == []
    other = tmp_path / "other"
    other.mkdir()
    (other / "scene.stac.json").write_text("{}")
    # The Item belongs to the output set: an existing one is not silently replaced.
    assert main([*args[:-4], "-o", str(other), "--device", "cpu", "--quiet", "--stac"]) == 2
    assert "scene.stac.json exists; use --overwrite" in capsys.readouterr().err
    assert sorted(p.name for p in other.iterdir()) == ["scene.stac.json"]
    assert (other / "scene.stac.json").read_text() == "{}"


def test_core_validation_catches_a_broken_item(make_scene, tmp_path, no_network):
    """The offline validator used above does reject an Item without its bbox."""
    item = {"type": "Feature", "stac_version": "1.1.0", "id": "x", "links": [], "assets": {}}
    item |= {"geometry": {"type": "Point", "coordinates": [0, 0]}, "properties": {"datetime": None}}
    with pytest.raises(pystac.errors.STACValidationError):
        JsonSchemaSTACValidator().validate_core(item, pystac.STACObjectType.ITEM, "1.1.0")


def test_uncertain_is_listed_when_classify_can_write_it(
    make_scene, tiny_checkpoint, tmp_path, capsys, no_network
):
    scene = make_scene(4 * 64, 3 * 64)
    out = tmp_path / "out"
    args = ["classify", str(scene), "-m", str(tiny_checkpoint), "-o", str(out), "--device", "cpu"]
    # A threshold no tile reaches: every classified pixel becomes uncertain.
    assert main([*args, "--stac", "--min-confidence", "0.99", "--quiet"]) == 0
    data = json.loads((out / "scene.stac.json").read_text())
    classes = data["assets"]["classes"]["classification:classes"]
    assert [(c["value"], c["name"]) for c in classes[-2:]] == [(254, "uncertain"), (255, "nodata")]
    with rasterio.open(out / "scene_classes.tif") as ds:
        values = {int(v) for v in set(ds.read(1).ravel())}
    assert 254 in values and values <= {c["value"] for c in classes}
