"""Issue 5: many scenes (files, globs, folders, stdin), --skip-existing, --keep-going, JSON Lines,
determinism, and ``info`` on a scene."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from mscn_geo_cli.main import main

from mscn_geo.batch import expand_scenes
from mscn_geo.errors import InputError


def cli(capsys, *args: object) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_expand_files_globs_folders_stdin(make_scene, tmp_path: Path) -> None:
    a, b = make_scene(64, 64, name="a.tif"), make_scene(64, 64, name="b.tiff")
    (tmp_path / "notes.txt").write_text("x")
    assert expand_scenes([str(tmp_path / "*.tif*")]) == [a, b]
    assert expand_scenes([str(tmp_path)]) == [a, b]
    assert expand_scenes(["-", str(a)], io.StringIO(f"{b}\n\n{a}\n")) == [b, a]
    with pytest.raises(InputError, match="no scene matches"):
        expand_scenes([str(tmp_path / "*.vrt")])


def test_batch_json_lines_keep_going_skip_existing(make_scene, tiny_checkpoint, tmp_path, capsys):
    make_scene(64, 64, name="a.tif")
    make_scene(100, 64, name="c.tif")
    (tmp_path / "b.tif").write_text("not a raster")
    out = tmp_path / "out"
    base = ["classify", str(tmp_path / "*.tif"), "-m", tiny_checkpoint, "-o", out, "--json",
            "--device", "cpu", "--quiet"]  # fmt: skip
    code, stdout, err = cli(capsys, *base)  # stops at the first failure
    rows = [json.loads(line) for line in stdout.splitlines()]
    assert code == 2 and [r["status"] for r in rows] == ["ok", "error"]
    assert err.strip().splitlines() == [f"mscn-geo: error: {rows[1]['error']}"]
    code, stdout, err = cli(capsys, *base, "--keep-going", "--skip-existing")
    rows = [json.loads(line) for line in stdout.splitlines()]
    assert code == 2
    assert [(Path(r["scene"]).name, r["status"]) for r in rows] == [
        ("a.tif", "skipped"), ("b.tif", "error"), ("c.tif", "ok"),
    ]  # fmt: skip
    assert "not a readable raster" in rows[1]["error"] and rows[1]["exit_code"] == 2
    assert rows[2]["tiles"] == 2 and rows[2]["classified"] == 2
    assert err.strip().splitlines()[-1] == "mscn-geo: error: 1 of 3 scene(s) failed"
    assert sorted(p.name for p in out.iterdir() if p.suffix in (".gpkg", ".tif")) == [
        "a.gpkg", "a_classes.tif", "c.gpkg", "c_classes.tif",
    ]  # fmt: skip


def test_outputs_are_deterministic(make_scene, tiny_checkpoint, tmp_path, capsys) -> None:
    import geopandas as gpd

    scene = make_scene(200, 130, nodata_cols=30)
    for name in ("one", "two"):
        args = ["classify", scene, "-m", tiny_checkpoint, "-o", tmp_path / name, "--quiet"]
        assert cli(capsys, *args)[0] == 0
    one, two = tmp_path / "one", tmp_path / "two"
    for f in ("scene_classes.tif", "scene_classes.tif.aux.xml", "scene_classes.qml"):
        assert (one / f).read_bytes() == (two / f).read_bytes(), f
    a = gpd.read_file(one / "scene.gpkg", layer="tiles")
    b = gpd.read_file(two / "scene.gpkg", layer="tiles")
    assert a.drop(columns="geometry").equals(b.drop(columns="geometry"))
    assert a.geometry.geom_equals_exact(b.geometry, tolerance=0).all()


def test_info_says_what_classify_would_do(monkeypatch, make_scene, tiny_checkpoint, capsys) -> None:
    import mscn_geo.plan as plan_module

    scene = make_scene(300, 200, nodata_cols=140, dtype="uint16")
    code, stdout, err = cli(capsys, "info", scene, "-m", tiny_checkpoint, "--json")
    plan = json.loads(stdout)
    assert code == 0, err
    assert plan["bands_used"] == [1, 2, 3] and plan["dtype"] == "uint16"
    assert plan["scaling"].startswith("per-band 2-98 percentile stretch")
    assert (plan["tile_rows"], plan["tile_cols"]) == (4, 5)
    assert plan["nodata_tiles_skipped"] == 8 and plan["nodata_tiles_estimated"] is False
    assert plan["skipped_area_px"] == 8 * 64 * 64  # a number, not a sentence
    # A "huge" scene: estimated from one decimated mask read, never tile by tile.
    monkeypatch.setattr(plan_module, "EXACT_COUNT_PIXELS", 1000)
    monkeypatch.setattr(plan_module, "MASK_SAMPLE_SIDE", 75)
    monkeypatch.setattr(
        plan_module, "count_nodata_tiles", lambda *a: pytest.fail("read every tile")
    )
    code, stdout, _ = cli(capsys, "info", scene, "-m", tiny_checkpoint, "--json")
    plan = json.loads(stdout)
    assert plan["nodata_tiles_estimated"] is True and plan["nodata_tiles_skipped"] == 8
    assert plan["skipped_area_px"] == 8 * 64 * 64
    fine = make_scene(64, 64, name="fine.tif", transform=__import__("affine").Affine(
        0.1, 0, 500_000, 0, -0.1, 5e6))  # fmt: skip
    code, stdout, _ = cli(capsys, "info", fine, "-m", tiny_checkpoint, "--json")
    assert any("--resample" in w for w in json.loads(stdout)["warnings"])
