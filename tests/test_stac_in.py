"""A STAC Item as scene: visual asset, single-band assets stacked as a VRT, remote, bad Items."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio
from mscn_geo_cli.main import main

from mscn_geo.classify import classify_scene
from mscn_geo.errors import InputError
from mscn_geo.options import ClassifyOptions
from mscn_geo.stac_in import stac_source
from tests.http_range_server import RangeServer

W, H = 4 * 64, 2 * 64


@pytest.fixture
def item_folder(tmp_path, make_scene):
    """An RGB scene, its three bands as single-band files, a half-resolution band, and an Item."""
    folder = tmp_path / "stac"
    folder.mkdir()
    rgb = make_scene(W, H, name="rgb.tif", nodata=None)
    with rasterio.open(rgb) as src:
        profile, data = src.profile, src.read()
    for i, name in enumerate(("red", "green", "blue")):
        with rasterio.open(folder / f"{name}.tif", "w", **{**profile, "count": 1}) as dst:
            dst.write(data[i : i + 1])
    (folder / "visual.tif").write_bytes(rgb.read_bytes())
    coarse = {**profile, "count": 1, "width": W // 2, "height": H // 2}
    coarse["transform"] = profile["transform"] * rasterio.Affine.scale(2)
    with rasterio.open(folder / "nir20.tif", "w", **coarse) as dst:
        dst.write(data[:1, ::2, ::2])
    item = pystac.Item("S1", {"type": "Point", "coordinates": [0, 0]}, [0, 0, 0, 0],
                       dt.datetime(2024, 5, 1, tzinfo=dt.timezone.utc), {})  # fmt: skip
    for key in ("visual", "red", "green", "blue", "nir20"):
        asset = pystac.Asset(f"./{key}.tif", media_type=pystac.MediaType.GEOTIFF, roles=["data"])
        item.add_asset(key, asset)
    item.set_self_href(str(folder / "item.json"))
    item.save_object(include_self_link=False)
    return folder, rgb


def _classes(result) -> np.ndarray:
    with rasterio.open(result.outputs["raster"]) as ds:
        return ds.read(1)


def _options(out: Path, **kw) -> ClassifyOptions:
    return ClassifyOptions(out_dir=out, device="cpu", batch_size=8, **kw)


def test_visual_and_band_assets_classify_like_the_rgb_file(item_folder, tiny_model, tmp_path):
    folder, rgb = item_folder
    want = _classes(classify_scene(rgb, tiny_model, _options(tmp_path / "rgb")))
    visual = classify_scene(folder / "item.json", tiny_model, _options(tmp_path / "visual"))
    assert visual.outputs["raster"].name == "item_classes.tif"  # named after the Item
    np.testing.assert_array_equal(_classes(visual), want)
    bands = classify_scene(
        folder / "item.json", tiny_model, _options(tmp_path / "bands", assets="red,green,blue")
    )
    np.testing.assert_array_equal(_classes(bands), want)


def test_vrt_bands_follow_assets_order_and_vrt_is_removed(item_folder):
    folder, rgb = item_folder
    with rasterio.open(rgb) as ds:
        data, transform = ds.read(), ds.transform
    with stac_source(folder / "item.json", "blue,green,red") as vrt, rasterio.open(vrt) as ds:
        assert ds.count == 3 and list(ds.descriptions) == ["blue", "green", "red"]
        np.testing.assert_array_equal(ds.read(), data[::-1])
        assert ds.crs is not None and ds.transform == transform
    assert not Path(vrt).exists() and not Path(vrt).parent.exists()


def test_remote_item_and_assets(item_folder, tiny_model, tmp_path):
    folder, rgb = item_folder
    want = _classes(classify_scene(rgb, tiny_model, _options(tmp_path / "rgb")))
    with RangeServer(folder) as server:
        result = classify_scene(
            server.url("item.json"),
            tiny_model,
            _options(tmp_path / "remote", assets="red,green,blue"),
        )
        assert server.bytes_sent > 0
    np.testing.assert_array_equal(_classes(result), want)


@pytest.mark.parametrize(
    ("assets", "expected"),
    [
        ("red,swir", "STAC Item S1 has no asset swir (it has: blue, green, nir20, red, visual)"),
        ("red,green,nir20", "STAC Item S1: the assets are on different grids"),
    ],
)
def test_bad_assets_one_line_exit_2_nothing_left(
    assets, expected, item_folder, tiny_checkpoint, tmp_path, capsys
):
    folder, _ = item_folder
    out = tmp_path / "out"
    args = ["classify", str(folder / "item.json"), "-m", str(tiny_checkpoint), "-o", str(out)]
    assert main([*args, "--assets", assets, "--device", "cpu", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0], err
    assert not out.exists() or list(out.iterdir()) == []


def test_no_visual_asset_and_not_an_item(item_folder, tiny_model, tmp_path):
    folder, _ = item_folder
    data = json.loads((folder / "item.json").read_text())
    del data["assets"]["visual"]
    (folder / "novisual.json").write_text(json.dumps(data))
    with pytest.raises(InputError, match="has no visual asset; name the assets"):
        classify_scene(folder / "novisual.json", tiny_model, _options(tmp_path / "o"))
    (folder / "broken.json").write_text('{"type": "FeatureCollection"}')
    with pytest.raises(InputError, match="is not a readable STAC Item"):
        classify_scene(folder / "broken.json", tiny_model, _options(tmp_path / "o"))
