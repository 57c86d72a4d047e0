"""classify_scene's map outputs read back: overlap cells, TTA, uncertain class, COGs, errors."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from rio_cogeo.cogeo import cog_validate

from mscn_geo.aggregate import CellGrid
from mscn_geo.classify import classify_scene
from mscn_geo.io import read_layer_styles
from mscn_geo.options import ClassifyOptions
from mscn_geo.tiling import TileGrid

from .conftest import TINY_CLASSES


def _classify(scene: Path, model, out: Path, **kwargs):
    options = ClassifyOptions(out_dir=out, device="cpu", batch_size=8, workers=0, **kwargs)
    result = classify_scene(scene, model, options)
    with rasterio.open(result.outputs["raster"]) as ds:
        raster = ds.read(1)
    tiles = gpd.read_file(result.outputs["gpkg"], layer="tiles")
    return result, raster, tiles


def test_stride_equal_tile_paints_each_tile_on_its_own_cell(make_scene, tiny_model, tmp_path):
    scene = make_scene(200, 130)  # shifted last row and column
    result, raster, tiles = _classify(scene, tiny_model, tmp_path / "o", quicklook=False)
    grid = TileGrid(200, 130, 64, 64)
    classes = np.full(grid.shape, 255, np.uint8)
    classes[tiles["row"], tiles["col"]] = tiles["class_id"]
    # Today's ownership rule, byte for byte.
    np.testing.assert_array_equal(raster, grid.paint(classes, 0, 130))
    assert len(np.unique(raster)) > 1
    assert cog_validate(str(result.outputs["raster"]))[0]


def test_overlap_cells_are_the_mean_of_their_tiles(make_scene, tiny_model, tmp_path):
    scene = make_scene(192, 128)
    result, raster, tiles = _classify(
        scene, tiny_model, tmp_path / "o", stride=32, overlap_weight="uniform",
        probabilities=True, quicklook=False,
    )  # fmt: skip
    assert result.tiles == 5 * 3 and result.outputs["probs"].name == "scene_probs.tif"
    p = tiles.set_index(["row", "col"])[[f"p_{n}" for n in TINY_CLASSES]]
    # Cell (1, 2) (pixels y 32..64, x 64..96) lies in tiles (0..1, 1..2).
    mean = np.mean([p.loc[(r, c)].to_numpy() for r in (0, 1) for c in (1, 2)], axis=0)
    assert (raster[32:64, 64:96] == mean.argmax()).all()
    with rasterio.open(result.outputs["probs"]) as ds:
        assert ds.descriptions == tuple(TINY_CLASSES)
        probs = ds.read()
    np.testing.assert_array_equal(probs[:, 1, 2], np.rint(mean * 250))
    # The class raster is the per-cell argmax of the same mean, painted on the pixels.
    cells = CellGrid(192, 128, 32)
    margin = np.sort(probs, axis=0)[-1] - np.sort(probs, axis=0)[-2]
    clear = cells.paint(margin > 2, 0)
    np.testing.assert_array_equal(raster[clear], cells.paint(probs.argmax(0), 0)[clear])


def test_tta_is_invariant_to_flipping_the_scene(make_scene, tiny_model, tmp_path):
    scene = make_scene(64, 64)
    with rasterio.open(scene) as ds:
        profile, data = ds.profile, ds.read()
    flipped = tmp_path / "flipped.tif"
    with rasterio.open(flipped, "w", **profile) as ds:
        ds.write(data[:, :, ::-1])
    cols = [f"p_{n}" for n in TINY_CLASSES]
    runs = {}
    for tta in (False, True):
        for path in (scene, flipped):
            out = tmp_path / f"{path.stem}_{tta}"
            runs[path.stem, tta] = _classify(path, tiny_model, out, tta=tta, quicklook=False)[2]
    plain = [runs[s, False][cols].to_numpy()[0] for s in ("scene", "flipped")]
    averaged = [runs[s, True][cols].to_numpy()[0] for s in ("scene", "flipped")]
    assert np.abs(plain[0] - plain[1]).max() > 1e-3  # the model itself sees the flip
    np.testing.assert_allclose(averaged[0], averaged[1], atol=1e-5)


def test_min_confidence_uncertain_everywhere(make_scene, tiny_model, tmp_path):
    scene = make_scene(200, 130)
    plain = _classify(scene, tiny_model, tmp_path / "a", quicklook=False)[2]
    threshold = float(np.median(plain["confidence"]))
    result, raster, tiles = _classify(scene, tiny_model, tmp_path / "b", min_confidence=threshold)
    low = plain["confidence"] < threshold
    assert low.any() and (~low).any()
    # Tiles layer: the low ones are uncertain (254), the others keep their class.
    assert (tiles.loc[low.values, "class_name"] == "uncertain").all()
    assert (tiles.loc[low.values, "class_id"] == 254).all()
    assert (tiles.loc[~low.values, "class_id"] == plain.loc[~low.values, "class_id"]).all()
    grid = TileGrid(200, 130, 64, 64)
    expected = np.full(grid.shape, 255, np.uint8)
    expected[tiles["row"], tiles["col"]] = tiles["class_id"]
    np.testing.assert_array_equal(raster, grid.paint(expected, 0, 130))
    # Summary, areas, CSV, legend sidecars, GeoPackage styles and the landuse layer.
    summary = result.to_dict()
    assert summary["per_class"]["uncertain"] == int(low.sum())
    area = summary["areas"]["classes"]["uncertain"]
    assert area["pixels"] == int((raster == 254).sum()) and area["m2"] == area["pixels"] * 0.25
    csv = result.outputs["areas"].read_text().splitlines()
    assert any(line.split(",")[1] == "uncertain" for line in csv[1:])
    qml = ET.parse(result.outputs["raster"].with_suffix(".qml")).getroot()
    assert ("254", "uncertain") in [
        (e.get("value"), e.get("label")) for e in qml.iter("paletteEntry")
    ]
    for style in read_layer_styles(result.outputs["gpkg"]):
        assert 'value="uncertain"' in style["styleQML"], style["f_table_name"]
    landuse = gpd.read_file(result.outputs["gpkg"], layer="landuse")
    assert "uncertain" in set(landuse["class_name"])
    assert landuse["area_m2"].sum() == pytest.approx(summary["areas"]["valid_m2"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--tile-size", "64", "--stride", "48"], "stride must divide the tile size"),
        (["--min-confidence", "1.5"], "--min-confidence must be between 0 and 1, got 1.5"),
        (["--overlap-weight", "box"], "--overlap-weight must be one of uniform, hann, gaussian"),
    ],
)
def test_bad_map_options_exit_2_and_leave_nothing(
    make_scene, tiny_checkpoint, tmp_path, capsys, args, message
):
    from mscn_geo_cli.main import main

    scene = make_scene(100, 100)
    out = tmp_path / "out"
    code = main(["classify", str(scene), "--model", str(tiny_checkpoint), "--out", str(out), *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not out.exists() or not any(out.iterdir())


def test_json_summary_lists_the_map_outputs(make_scene, tiny_checkpoint, tmp_path, capsys):
    from mscn_geo_cli.main import main

    scene = make_scene(128, 128)
    out = tmp_path / "out"
    argv = ["classify", str(scene), "--model", str(tiny_checkpoint), "--out", str(out)]
    code = main([*argv, "--device", "cpu", "--stride", "32", "--probabilities", "--json"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert set(summary["outputs"]) == {"gpkg", "raster", "probs", "areas", "quicklook"}
    assert summary["areas"]["valid_pixels"] == 128 * 128
    for key in ("raster", "probs"):
        assert cog_validate(summary["outputs"][key])[0]
