"""``mscn-geo chips``: chips read as classify reads tiles, cover, spatial split, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import rasterio
import shapely
from mscn_geo_cli.main import main
from rasterio.features import rasterize
from rasterio.transform import from_origin
from rasterio.windows import transform as window_transform

from mscn_geo import chips as chips_module
from mscn_geo.chips import ChipOptions, make_chips
from mscn_geo.data import read_image
from mscn_geo.models import load_checkpoint
from mscn_geo.options import ClassifyOptions
from mscn_geo.plan import plan_scene
from mscn_geo.reader import TileReader

TILE, STRIDE = 64, 32


def _box(transform, c0: int, r0: int, c1: int, r1: int):
    """Polygon of the pixel rectangle [c0, c1) x [r0, r1) in map coordinates."""
    corners = [transform @ (c, r) for c, r in ((c0, r0), (c1, r0), (c1, r1), (c0, r1))]
    return shapely.Polygon(corners)


@pytest.fixture
def scenes(make_scene) -> list[Path]:
    """Two real GeoTIFFs in two CRSs: uint8 UTM with a nodata strip, uint16 LAEA (stretched)."""
    a = make_scene(384, 320, name="a.tif", nodata_cols=20)
    b = make_scene(
        320,
        256,
        name="b.tif",
        crs="EPSG:3035",
        dtype="uint16",
        transform=from_origin(4_500_000.0, 3_000_000.0, 0.5, 0.5),
        seed=1,
    )
    return [a, b]


def _labels(scenes: list[Path], path: Path, crs: str | None = "EPSG:4326") -> Path:
    """water/forest/urban polygons over both scenes, written in ``crs``."""
    parts = []
    layout = {
        "a.tif": [
            ("water", 20, 0, 200, 160),
            ("urban", 20, 160, 200, 320),
            ("forest", 200, 0, 384, 320),
        ],
        "b.tif": [("water", 0, 0, 160, 256), ("urban", 160, 0, 320, 256)],
    }
    for scene in scenes:
        with rasterio.open(scene) as ds:
            boxes = [(name, _box(ds.transform, *px)) for name, *px in layout[scene.name]]
            frame = gpd.GeoDataFrame(
                {"kind": [n for n, _ in boxes], "note": "x"},
                geometry=[g for _, g in boxes],
                crs=ds.crs,
            )
        parts.append(frame.to_crs(crs or "EPSG:4326"))
    both = pd.concat(parts, ignore_index=True)
    frame = gpd.GeoDataFrame(both.drop(columns="geometry"), geometry=list(both.geometry), crs=crs)
    frame.to_file(path)
    return path


def _run(scenes, labels, out, checkpoint, **kw) -> chips_module.ChipsResult:
    read = ClassifyOptions(
        tile_size=kw.pop("tile_size", TILE), stride=kw.pop("stride", STRIDE), workers=1,
        resample=kw.pop("resample", False),
    )  # fmt: skip
    options = ChipOptions(labels=labels, class_field="kind", out_dir=out, read=read, **kw)
    return make_chips(scenes, load_checkpoint(checkpoint).meta, options)


@pytest.mark.parametrize("label_crs", ["EPSG:4326", "EPSG:32633"])
def test_chips_are_classify_tiles_and_cover_one_class(
    scenes, tmp_path, tiny_checkpoint, label_crs
) -> None:
    labels = _labels(scenes, tmp_path / f"labels_{label_crs[5:]}.gpkg", label_crs)
    out = tmp_path / "chips"
    result = _run(scenes, labels, out, tiny_checkpoint, val_fraction=0.0, min_chips=0)
    meta = load_checkpoint(tiny_checkpoint).meta
    frame = gpd.read_file(out / "chips.gpkg", layer="chips")
    assert result.chips == len(frame) > 0
    assert set(frame["class_name"]) == {"water", "urban", "forest"}
    label_frame = gpd.read_file(labels)
    for scene in scenes:
        plan = plan_scene(scene, meta, ClassifyOptions(tile_size=TILE, stride=STRIDE))
        info, grid = plan.info, plan.grid
        _, cols = grid.shape
        tiles = grid.tiles()
        # Independent reference: the labels rasterized over the whole scene.
        in_scene = label_frame.to_crs(info.crs)
        with rasterio.open(scene) as ds:
            valid_all = ds.read_masks(1) > 0
        class_maps = {
            name: rasterize(
                list(group.geometry), (info.height, info.width), transform=info.transform
            )
            > 0
            for name, group in in_scene.groupby("kind")
        }
        expected = {}
        for tile in tiles:
            w = tile.window
            sl = np.s_[w.row_off : w.row_off + w.height, w.col_off : w.col_off + w.width]
            valid = valid_all[sl]
            if not valid.any():
                continue
            covers = {n: (m[sl] & valid).sum() / valid.sum() for n, m in class_maps.items()}
            winners = [n for n, c in covers.items() if c >= 0.9]
            if len(winners) == 1:
                expected[(tile.row, tile.col)] = winners[0]
        mine = frame[frame["scene"] == str(scene)]
        got = {
            (r, c): k for r, c, k in zip(mine["row"], mine["col"], mine["class_name"], strict=True)
        }
        assert got == expected, scene.name
        with TileReader(info, grid.tile) as reader:
            for _, row in mine.iterrows():
                tile = tiles[row["row"] * cols + row["col"]]
                want = reader.read(tile).pixels
                with rasterio.open(out / row["path"]) as chip:
                    assert chip.crs == info.crs
                    assert chip.transform.almost_equals(
                        window_transform(tile.window, info.transform)
                    )
                    np.testing.assert_array_equal(chip.read(), want)
                np.testing.assert_array_equal(read_image(out / row["path"]), want)
    described = json.loads((out / "chips.json").read_text())
    assert described["bands"] == [1, 2, 3] and described["band_names"] == meta.bands
    assert described["tile_size"] == TILE and described["pixel_size_m"] == pytest.approx(0.5)
    assert described["split"]["val"] == []
    assert sorted(described["split"]["train"]) == sorted(frame["path"])


def test_resampled_chips_equal_resampled_tiles(make_scene, tmp_path, tiny_checkpoint) -> None:
    # 0.25 m scene, 0.5 m model: 128 px windows read at 64 px.
    scene = make_scene(
        512, 384, name="fine.tif", transform=from_origin(500_000.0, 5_000_000.0, 0.25, 0.25)
    )
    with rasterio.open(scene) as ds:
        polys = [_box(ds.transform, 0, 0, 256, 384), _box(ds.transform, 256, 0, 512, 384)]
        gpd.GeoDataFrame({"kind": ["left", "right"]}, geometry=polys, crs=ds.crs).to_file(
            tmp_path / "l.gpkg"
        )
    out = tmp_path / "chips"
    _run([scene], tmp_path / "l.gpkg", out, tiny_checkpoint, resample=True, stride=64, min_chips=0)
    meta = load_checkpoint(tiny_checkpoint).meta
    plan = plan_scene(scene, meta, ClassifyOptions(tile_size=TILE, stride=64, resample=True))
    frame = gpd.read_file(out / "chips.gpkg")
    assert len(frame) > 0
    _, cols = plan.grid.shape
    with TileReader(plan.info, plan.grid.tile) as reader:
        for _, row in frame.iterrows():
            tile = plan.grid.tiles()[row["row"] * cols + row["col"]]
            with rasterio.open(out / row["path"]) as chip:
                assert chip.shape == (TILE, TILE) and chip.res == pytest.approx((0.5, 0.5))
                np.testing.assert_array_equal(chip.read(), reader.read(tile).pixels)
    assert json.loads((out / "chips.json").read_text())["pixel_size_m"] == pytest.approx(0.5)


def test_spatial_split_puts_no_overlapping_chips_on_both_sides(scenes, tmp_path, tiny_checkpoint):
    labels = _labels(scenes, tmp_path / "labels.geojson")
    out = tmp_path / "chips"
    result = _run(
        scenes, labels, out, tiny_checkpoint, val_fraction=0.3, block_tiles=2, min_chips=0
    )
    frame = gpd.read_file(out / "chips.gpkg")
    train, val = frame[frame["split"] == "train"], frame[frame["split"] == "val"]
    assert len(train) and len(val)
    for name in ("water", "urban", "forest"):
        assert (val["class_name"] == name).any() and (train["class_name"] == name).any()
    tree = shapely.STRtree(list(val.geometry))
    for geom in train.geometry:
        for j in tree.query(geom, predicate="intersects"):
            assert geom.intersection(val.geometry.iloc[j]).area < 1e-6 * geom.area
    assert result.dropped_at_split > 0  # the fixture's fields straddle split blocks
    # chips.json, chips.gpkg and the files on disk agree.
    described = json.loads((out / "chips.json").read_text())
    on_disk = sorted(str(p.relative_to(out)) for p in out.rglob("*.tif"))
    assert sorted(described["split"]["train"] + described["split"]["val"]) == on_disk
    assert sorted(described["split"]["val"]) == sorted(val["path"])
    # Same seed, same split.
    again = _run(
        scenes,
        labels,
        tmp_path / "again",
        tiny_checkpoint,
        val_fraction=0.3,
        block_tiles=2,
        min_chips=0,
    )
    assert again.counts == result.counts
    assert (
        json.loads((tmp_path / "again" / "chips.json").read_text())["split"] == described["split"]
    )


def test_gpkg_opens_styled_by_class(scenes, tmp_path, tiny_checkpoint) -> None:
    from mscn_geo.io import read_layer_styles

    labels = _labels(scenes, tmp_path / "labels.geojson")
    _run(scenes, labels, tmp_path / "chips", tiny_checkpoint, min_chips=0)
    gpkg = tmp_path / "chips" / "chips.gpkg"
    frame = gpd.read_file(gpkg, layer="chips")
    assert frame.crs is not None and frame.crs.to_epsg() == 4326  # scenes in two CRSs: labels'
    assert set(frame.columns) >= {"class_name", "scene", "split", "path", "geometry"}
    (style,) = read_layer_styles(gpkg)
    assert style["f_table_name"] == "chips" and style["useAsDefault"]
    assert 'attr="class_name"' in style["styleQML"]
    assert all(f'value="{n}"' in style["styleQML"] for n in ("water", "urban", "forest"))
    import sqlite3

    with sqlite3.connect(gpkg) as db:
        assert db.execute("PRAGMA application_id").fetchone()[0] == 0x47504B47
        assert db.execute("PRAGMA user_version").fetchone()[0] == 10200  # GeoPackage 1.2


def test_interrupted_run_leaves_nothing(scenes, tmp_path, tiny_checkpoint, monkeypatch) -> None:
    labels = _labels(scenes, tmp_path / "labels.geojson")
    real = chips_module._write_chip
    calls = []

    def write_then_interrupt(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        real(*args, **kwargs)

    monkeypatch.setattr(chips_module, "_write_chip", write_then_interrupt)
    out = tmp_path / "out" / "chips"
    out.parent.mkdir()
    with pytest.raises(KeyboardInterrupt):
        _run(scenes, labels, out, tiny_checkpoint)
    assert list(out.parent.iterdir()) == []


def test_end_to_end_chips_train_classify_has_user_classes(
    scenes, make_scene, tmp_path, tiny_checkpoint
) -> None:
    from mscn_geo.training import TrainConfig, train
    from tests.conftest import classify_and_read

    labels = _labels(scenes, tmp_path / "labels.geojson")
    out = tmp_path / "chips"
    _run(scenes[:1], labels, out, tiny_checkpoint, stride=64, min_chips=0)
    cfg = TrainConfig(
        arch="resnet18", input_size=32, epochs=1, batch_size=16, warmup_epochs=0,
        val_fraction=0.3, ema_decay=0.0, device="cpu",
    )  # fmt: skip
    train(tmp_path / "m.pt", cfg, data_dir=out)
    model = load_checkpoint(tmp_path / "m.pt")
    assert model.meta.class_names == ["forest", "urban", "water"]
    # chips.json reached the checkpoint: 0.5 m chips of 64 px trained at 32 px.
    assert model.meta.pixel_size_m == pytest.approx(1.0)
    small = make_scene(96, 64, name="small.tif")  # over scene a's water and urban
    result, frame, _, _ = classify_and_read(small, model, tmp_path / "map")
    assert set(frame["class_name"]) <= {"forest", "urban", "water"} and len(frame) > 0
    assert set(result.per_class) == {"forest", "urban", "water"}


def _cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _base(scenes, labels, out, checkpoint) -> list[str]:
    return [
        "chips", *map(str, scenes), "--labels", str(labels), "--class-field", "kind",
        "--out", str(out), "--model", str(checkpoint), "--tile-size", str(TILE), "--workers", "0",
    ]  # fmt: skip


def _one_error_line(code: int, err: str, *texts: str) -> None:
    assert code == 2
    lines = [line for line in err.splitlines() if line.startswith("mscn-geo: error:")]
    assert len(lines) == 1, err
    for text in texts:
        assert text in lines[0], lines[0]


def test_cli_json_summary_and_existing_output(scenes, tmp_path, tiny_checkpoint, capsys) -> None:
    labels = _labels(scenes, tmp_path / "labels.geojson")
    out = tmp_path / "chips"
    code, stdout, err = _cli(capsys, *_base(scenes, labels, out, tiny_checkpoint), "--json")
    assert code == 0, err
    summary = json.loads(stdout)
    assert summary["chips"] == sum(c["train"] + c["val"] for c in summary["counts"].values()) > 0
    assert summary["classes"] == ["forest", "urban", "water"]
    code, _, err = _cli(capsys, *_base(scenes, labels, out, tiny_checkpoint))
    _one_error_line(code, err, "exists; use --overwrite")
    code, _, err = _cli(capsys, *_base(scenes, labels, out, tiny_checkpoint), "--overwrite")
    assert code == 0, err
    # --overwrite never replaces a folder this command did not make.
    other = tmp_path / "mine"
    other.mkdir()
    (other / "precious.txt").write_text("keep")
    code, _, err = _cli(capsys, *_base(scenes, labels, other, tiny_checkpoint), "--overwrite")
    _one_error_line(code, err, "not an mscn-geo output folder")
    assert (other / "precious.txt").read_text() == "keep"


def _no_leftovers(folder: Path, out: Path) -> None:
    assert not out.exists()
    assert not [p for p in folder.iterdir() if p.name.startswith(f".{out.name}")]


def test_labels_without_crs(scenes, tmp_path, tiny_checkpoint, capsys) -> None:
    labels = _labels(scenes, tmp_path / "labels.shp", crs=None)
    out = tmp_path / "chips"
    code, _, err = _cli(capsys, *_base(scenes, labels, out, tiny_checkpoint))
    _one_error_line(code, err, "have no CRS")
    _no_leftovers(tmp_path, out)


def test_unknown_class_field_lists_fields(scenes, tmp_path, tiny_checkpoint, capsys) -> None:
    labels = _labels(scenes, tmp_path / "labels.geojson")
    args = _base(scenes, labels, tmp_path / "chips", tiny_checkpoint)
    args[args.index("kind")] = "klass"
    code, _, err = _cli(capsys, *args)
    _one_error_line(code, err, "no field 'klass'", "fields: kind, note")
    _no_leftovers(tmp_path, tmp_path / "chips")


def test_labels_overlapping_no_scene(scenes, tmp_path, tiny_checkpoint, capsys) -> None:
    far = gpd.GeoDataFrame(
        {"kind": ["water", "urban"]},
        geometry=[shapely.box(100, 10, 101, 11), shapely.box(101, 10, 102, 11)],
        crs="EPSG:4326",
    )
    far.to_file(tmp_path / "far.geojson")
    out = tmp_path / "chips"
    code, _, err = _cli(capsys, *_base(scenes, tmp_path / "far.geojson", out, tiny_checkpoint))
    _one_error_line(code, err, "overlap none of the 2 scene(s)")
    _no_leftovers(tmp_path, out)


def test_one_class_is_an_error(scenes, tmp_path, tiny_checkpoint, capsys) -> None:
    labels = _labels(scenes, tmp_path / "labels.geojson")
    frame = gpd.read_file(labels)
    frame[frame["kind"] == "forest"].to_file(tmp_path / "forest.geojson")
    out = tmp_path / "chips"
    code, _, err = _cli(capsys, *_base(scenes, tmp_path / "forest.geojson", out, tiny_checkpoint))
    _one_error_line(code, err, "only class 'forest' has chips", "at least two classes")
    _no_leftovers(tmp_path, out)


def test_small_class_warns_with_its_count(scenes, tmp_path, tiny_checkpoint, capsys) -> None:
    labels = _labels(scenes, tmp_path / "labels.geojson")
    out = tmp_path / "chips"
    code, stdout, err = _cli(capsys, *_base(scenes, labels, out, tiny_checkpoint), "--json")
    assert code == 0
    counts = json.loads(stdout)["counts"]
    n = counts["forest"]["train"] + counts["forest"]["val"]
    assert n < 20  # the fixture's forest is one 184 x 320 px field
    assert f"mscn-geo: warning: class 'forest' has only {n} chip(s) (fewer than 20)" in err


def test_several_layers_need_layer(scenes, tmp_path, tiny_checkpoint, capsys) -> None:
    labels = _labels(scenes, tmp_path / "labels.gpkg")
    gpd.read_file(labels).to_file(labels, layer="second")
    out = tmp_path / "chips"
    code, _, err = _cli(capsys, *_base(scenes, labels, out, tiny_checkpoint))
    _one_error_line(code, err, "2 layers (labels, second)", "--layer")
    code, _, err = _cli(capsys, *_base(scenes, labels, out, tiny_checkpoint), "--layer", "second")
    assert code == 0, err
