"""The command line: exit codes, one-line errors, --json, info."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
from mscn_geo_cli.main import main

from mscn_geo.models import load_checkpoint, save_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_classify_json(make_scene, tiny_checkpoint, tmp_path, capsys) -> None:
    scenes = [make_scene(100, 70, name="a.tif"), make_scene(64, 64, name="b.tif", nodata_cols=10)]
    out = tmp_path / "out"
    code, stdout, err = cli(
        capsys, "classify", *scenes, "--model", tiny_checkpoint, "--out", out, "--json",
        "--device", "cpu", "--workers", "1",
    )  # fmt: skip
    assert code == 0, err
    lines = [json.loads(line) for line in stdout.splitlines()]
    assert [Path(d["scene"]).name for d in lines] == ["a.tif", "b.tif"]
    assert lines[0]["tiles"] == 4 and lines[0]["classified"] == 4
    assert sum(lines[0]["per_class"].values()) == 4
    assert lines[0]["crs"] == "EPSG:32633" and lines[0]["device"] == "cpu"
    assert lines[0]["model"]["trained"] is False
    assert Path(lines[1]["outputs"]["raster"]).is_file()
    names = {p.name for p in out.iterdir()}
    assert {"a.gpkg", "a_classes.tif", "b.gpkg", "b_classes.tif"} <= names
    assert not [n for n in names if n.startswith(".")]  # no temporaries left


def test_human_summary_flags_untrained_model(make_scene, tiny_checkpoint, tmp_path, capsys):
    scene = make_scene(64, 64)
    code, stdout, _ = cli(capsys, "classify", scene, "-m", tiny_checkpoint, "-o", tmp_path / "o")
    assert code == 0
    assert "UNTRAINED placeholder" in stdout and "scene.gpkg" in stdout


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda tmp: tmp / "missing.tif", "scene not found"),
        (
            lambda tmp: (tmp / "t.tif").write_text("hello") and tmp / "t.tif",
            "not a readable raster",
        ),
    ],
)
def test_bad_scene_is_one_line_exit_2(make, message, tiny_checkpoint, tmp_path, capsys) -> None:
    code, stdout, err = cli(
        capsys, "classify", make(tmp_path), "-m", tiny_checkpoint, "-o", tmp_path
    )
    assert code == 2
    assert err.startswith("mscn-geo: error: ") and message in err
    assert len(err.strip().splitlines()) == 1 and stdout == ""


def test_existing_output_exit_2_and_debug_traceback(make_scene, tiny_checkpoint, tmp_path, capsys):
    scene = make_scene(64, 64)
    args = ["classify", scene, "-m", tiny_checkpoint, "-o", tmp_path / "o", "--quiet"]
    assert cli(capsys, *args)[0] == 0
    code, _, err = cli(capsys, *args)
    assert code == 2 and "exists; use --overwrite" in err and len(err.strip().splitlines()) == 1
    code, _, err = cli(capsys, *args, "--debug")
    assert code == 2 and "Traceback" in err


def test_usage_errors_exit_2(make_scene, tmp_path, capsys) -> None:
    scene = make_scene(64, 64)
    assert cli(capsys, "classify", scene, "--batch-size", "0")[0] == 2
    assert cli(capsys, "classify", scene, "--no-such-option")[0] == 2
    code, _, err = cli(capsys, "classify", scene, "--tile-size", "64", "--stride", "65")
    assert code == 2 and "stride 65 is larger than the tile size 64" in err


def test_internal_error_is_one_line_exit_1(monkeypatch, make_scene, tiny_checkpoint, capsys):
    import mscn_geo.classify

    def boom(*args, **kwargs):
        raise RuntimeError("kaboom")

    monkeypatch.setattr(mscn_geo.classify, "classify_scene", boom)
    code, _, err = cli(capsys, "classify", make_scene(64, 64), "-m", tiny_checkpoint)
    assert code == 1
    assert err.strip() == (
        "mscn-geo: internal error: RuntimeError: kaboom (run with --debug for the traceback)"
    )


def test_info_checkpoint_and_scene(make_scene, tiny_checkpoint, capsys) -> None:
    code, stdout, _ = cli(capsys, "info", tiny_checkpoint, "--json")
    meta = json.loads(stdout)
    assert (
        code == 0
        and meta["kind"] == "checkpoint"
        and meta["classes"] == ["water", "forest", "urban"]
    )
    assert meta["status"] == "UNTRAINED placeholder" and meta["tile_size"] == 64
    # What classify applies from the checkpoint: scaling, scene bands, validation list.
    assert meta["scaling"] is None and meta["scene_bands"] is None
    assert meta["validation_images"] == 0
    loaded = load_checkpoint(tiny_checkpoint)
    scaled = dataclasses.replace(
        loaded.meta,
        scaling={"method": "fixed", "low": [0.0] * 3, "high": [4000.0] * 3},
        scene_bands=[4, 3, 2],
        val_files=["water/a.tif", "forest/b.tif"],
    )
    other = tiny_checkpoint.parent / "scaled.pt"
    save_checkpoint(other, loaded.model, loaded.arch, scaled, arch_kwargs=loaded.arch_kwargs)
    code, stdout, _ = cli(capsys, "info", other, "--json")
    meta = json.loads(stdout)
    assert code == 0 and meta["scaling"]["high"] == [4000.0] * 3
    assert meta["scene_bands"] == [4, 3, 2] and meta["validation_images"] == 2
    scene = make_scene(200, 130, nodata_cols=70)
    code, stdout, _ = cli(capsys, "info", scene, "-m", tiny_checkpoint, "--json")
    plan = json.loads(stdout)
    assert code == 0 and plan["kind"] == "scene"
    assert (plan["tile_rows"], plan["tile_cols"], plan["tiles"]) == (3, 4, 12)
    assert plan["nodata_tiles_skipped"] == 3 and plan["bands_used"] == [1, 2, 3]
    code, stdout, _ = cli(capsys, "info", tiny_checkpoint)
    assert code == 0 and "UNTRAINED placeholder" in stdout


def _console_script() -> list[str]:
    exe = ROOT / ".venv" / "bin" / "mscn-geo"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "mscn_geo_cli.main"]


def test_console_script_exit_code(tmp_path) -> None:
    proc = subprocess.run(
        [*_console_script(), "classify", str(tmp_path / "none.tif")], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"mscn-geo: error: scene not found: {tmp_path / 'none.tif'}"
    ]


def test_console_script_output_is_complete_after_its_fast_exit(
    make_scene, tiny_checkpoint, tmp_path
):
    """The script skips the collector at exit: stdout and the written files are whole."""
    scene = make_scene(192, 128)
    out = tmp_path / "out"
    argv = [*_console_script(), "classify", str(scene), "-m", str(tiny_checkpoint)]
    argv += ["-o", str(out), "--json", "--quiet"]
    proc = subprocess.run(argv, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["status"] == "ok" and summary["classified"] == summary["tiles"] > 0
    import geopandas as gpd

    assert len(gpd.read_file(summary["outputs"]["gpkg"], layer="tiles")) == summary["tiles"]
