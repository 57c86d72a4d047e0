"""Issue 5: SIGINT/SIGTERM stop cleanly; --resume continues a killed run to identical outputs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio

from mscn_geo.classify import classify_scene
from mscn_geo.errors import Interrupted, OptionError, OutputError
from mscn_geo.options import ClassifyOptions
from mscn_geo.resume import Journal, journal_dir

from .conftest import TINY_CLASSES

ROOT = Path(__file__).resolve().parents[1]

# Runs the real CLI in a subprocess with each tile read slowed down (so a test
# can signal it mid-run) and counted (so a test can see what a resumed run redid).
DRIVER = """
import os, sys, time
from pathlib import Path
import mscn_geo.reader as reader
marker = Path(os.environ["MSCN_TEST_MARKER"])
delay = float(os.environ.get("MSCN_TEST_DELAY", "0"))
hold = os.environ.get("MSCN_TEST_HOLD")
real = reader.TileReader.read
def slow(self, tile):
    with open(marker, "a") as f:
        f.write(f"{tile.row},{tile.col}\\n")
    while hold and not Path(hold).exists():
        time.sleep(0.02)
    time.sleep(delay)
    return real(self, tile)
reader.TileReader.read = slow
reader.TileReader.can_read_runs = lambda self: False  # tile by tile: each read slowed, counted
from mscn_geo_cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def start(
    args: list[object], marker: Path, delay: float, hold: Path | None = None
) -> subprocess.Popen:
    """The CLI in a subprocess; each tile read waits ``delay`` s (and until ``hold`` exists)."""
    env = {**os.environ, "MSCN_TEST_MARKER": str(marker), "MSCN_TEST_DELAY": str(delay)}
    if hold is not None:
        env["MSCN_TEST_HOLD"] = str(hold)
    return subprocess.Popen(
        [sys.executable, "-c", DRIVER, *map(str, args)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT,
    )  # fmt: skip


def wait_for(condition, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "timed out waiting"
        time.sleep(0.02)


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_stops_within_2s_and_leaves_nothing(
    signum, code, make_scene, tiny_checkpoint, tmp_path
) -> None:
    scene = make_scene(640, 320)  # 50 tiles, 0.1 s each: 5 s uninterrupted
    out = tmp_path / "out"
    marker = tmp_path / "reads.txt"
    proc = start(
        ["classify", scene, "-m", tiny_checkpoint, "-o", out, "--device", "cpu",
         "--batch-size", "2", "--workers", "1"],
        marker, 0.1,
    )  # fmt: skip
    wait_for(lambda: len(lines(marker)) >= 5)
    sent = time.monotonic()
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=10)
    assert time.monotonic() - sent < 2.0
    assert proc.returncode == code
    name = signal.Signals(signum).name
    assert err.strip().splitlines() == [
        f"mscn-geo: error: interrupted by {name}; no partial outputs were left"
    ]
    assert len(lines(marker)) < 50
    assert not out.exists() or sorted(p.name for p in out.iterdir()) == []


def read_outputs(out: Path, stem: str = "scene") -> tuple[bytes, np.ndarray, gpd.GeoDataFrame]:
    raster = out / f"{stem}_classes.tif"
    with rasterio.open(raster) as ds:
        classes = ds.read(1)
    frame = gpd.read_file(out / f"{stem}.gpkg", layer="tiles")
    return raster.read_bytes(), classes, frame


def finished_tiles(folder: Path) -> int:
    """Tiles the journal in ``folder`` has finished (its last intact record's ``end``)."""
    records = list(Journal(folder, {"num_classes": len(TINY_CLASSES)}).records())
    return records[-1].end if records else 0


def test_resume_after_sigkill_gives_identical_outputs(
    make_scene, tiny_checkpoint, tiny_model, tmp_path
) -> None:
    scene = make_scene(512, 192, nodata_cols=70)  # 24 tiles (3 nodata), batches of 2
    args = ["classify", scene, "-m", tiny_checkpoint, "--device", "cpu", "--batch-size", "2",
            "--workers", "1", "--resume", "--quiet", "--json"]  # fmt: skip
    out = tmp_path / "out"
    journal = journal_dir(scene, out)
    marker = tmp_path / "reads1.txt"
    proc = start([*args, "-o", out], marker, 0.1)
    wait_for(lambda: finished_tiles(journal) >= 6)  # appended per batch, from the loop
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "scene.gpkg").exists() and not (out / "scene_classes.tif").exists()
    kept = finished_tiles(journal)
    assert 6 <= kept < 24

    marker2 = tmp_path / "reads2.txt"
    second = start([*args, "-o", out], marker2, 0.0)
    stdout, err = second.communicate(timeout=120)
    assert second.returncode == 0, err
    # Only the tiles after the journal's finished prefix were read again.
    assert sorted(lines(marker2)) == sorted(f"{i // 8},{i % 8}" for i in range(kept, 24))
    summary = json.loads(stdout)
    assert summary["from_journal"] == kept
    assert not journal.exists()
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []

    # The same arguments, uninterrupted (in this process).
    reference = tmp_path / "ref"
    options = ClassifyOptions(out_dir=reference, device="cpu", batch_size=2, workers=1, resume=True)
    classify_scene(scene, tiny_model, options)
    raster_bytes, classes, frame = read_outputs(out)
    ref_bytes, _ref_classes, ref_frame = read_outputs(reference)
    assert raster_bytes == ref_bytes  # byte for byte
    columns = [c for c in ref_frame.columns if c != "geometry"]
    assert frame[columns].equals(ref_frame[columns])  # value for value
    assert frame.geometry.geom_equals_exact(ref_frame.geometry, tolerance=0).all()
    # Without --resume only float rounding of batched convolutions may differ.
    plain = classify_scene(
        scene, tiny_model, ClassifyOptions(out_dir=tmp_path / "plain", device="cpu", batch_size=2)
    )
    _, plain_classes, plain_frame = read_outputs(plain.outputs["gpkg"].parent)
    np.testing.assert_array_equal(plain_classes, classes)
    p_cols = [c for c in columns if c.startswith("p_")]
    np.testing.assert_allclose(plain_frame[p_cols], frame[p_cols], atol=1e-5)


def interrupted_run(scene: Path, model, options: ClassifyOptions, after: int) -> Interrupted:
    def progress(done: int, total: int) -> None:
        if done >= after:
            raise Interrupted(signal.SIGINT)

    with pytest.raises(Interrupted) as err:
        classify_scene(scene, model, options, progress=progress)
    return err.value


def test_resume_refuses_a_different_run_journal(make_scene, tiny_model, tmp_path) -> None:
    scene = make_scene(320, 192)  # 15 tiles
    out = tmp_path / "out"
    options = ClassifyOptions(out_dir=out, device="cpu", batch_size=2, workers=0, resume=True)
    interrupted_run(scene, tiny_model, options, after=9)
    journal = journal_dir(scene, out)
    assert finished_tiles(journal) >= 8
    assert not (out / "scene.gpkg").exists()
    changed = ClassifyOptions(**{**options.__dict__, "stride": 32})
    with pytest.raises(OptionError) as err:
        classify_scene(scene, tiny_model, changed)
    assert "is the resume journal of a different run (stride changed)" in str(err.value)
    assert err.value.fields == ("stride",)
    changed = ClassifyOptions(**{**options.__dict__, "batch_size": 4})
    with pytest.raises(OptionError, match=r"\(batch_size changed\)"):
        classify_scene(scene, tiny_model, changed)
    # auto ran torch-bf16 or onnxruntime, never fp32 PyTorch: other probabilities.
    changed = ClassifyOptions(**{**options.__dict__, "backend": "torch"})
    with pytest.raises(OptionError, match=r"\(backend changed\)"):
        classify_scene(scene, tiny_model, changed)
    os.utime(scene, ns=(0, 0))  # the scene changed on disk
    with pytest.raises(OptionError, match=r"\(scene_mtime_ns changed\)"):
        classify_scene(scene, tiny_model, options)


def test_resume_in_process_matches_uninterrupted(make_scene, tiny_model, tmp_path) -> None:
    scene = make_scene(320, 192, nodata_cols=70)
    options = ClassifyOptions(
        out_dir=tmp_path / "a", device="cpu", batch_size=2, workers=0, resume=True
    )
    interrupted_run(scene, tiny_model, options, after=9)
    result = classify_scene(scene, tiny_model, options)
    ref = classify_scene(
        scene, tiny_model, ClassifyOptions(out_dir=tmp_path / "b", device="cpu", batch_size=2)
    )
    assert result.per_class == ref.per_class and result.skipped == ref.skipped == 3
    a = read_outputs(tmp_path / "a")
    b = read_outputs(tmp_path / "b")
    assert a[0] == b[0]
    assert a[2].drop(columns="geometry").equals(b[2].drop(columns="geometry"))


def test_interrupt_says_where_the_journal_is_and_the_resumed_summary_counts_it(
    make_scene, tiny_model, tmp_path
) -> None:
    scene = make_scene(320, 192, nodata_cols=70)  # 15 tiles, 3 of them nodata
    out = tmp_path / "out"
    options = ClassifyOptions(out_dir=out, device="cpu", batch_size=2, workers=0, resume=True)
    error = interrupted_run(scene, tiny_model, options, after=7)
    journal = journal_dir(scene, out)
    assert f"kept in the resume journal {journal}" in str(error)
    assert error.exit_code == 130 and error.fields == ("resume",)
    kept = finished_tiles(journal)
    records = list(Journal(journal, {"num_classes": len(TINY_CLASSES)}).records())
    kept_classified = sum(len(r.index) for r in records)
    result = classify_scene(scene, tiny_model, options)
    assert result.to_dict()["from_journal"] == kept > 0
    assert result.classified == 12
    # tiles/s counts only the tiles this run classified.
    assert result.tiles_per_s * result.seconds == pytest.approx(12 - kept_classified)
    # Interrupted before any tile was finished: nothing is kept, nothing to mention.
    other = ClassifyOptions(**{**options.__dict__, "out_dir": tmp_path / "o2"})
    error = interrupted_run(scene, tiny_model, other, after=0)
    assert "journal" not in str(error)


def test_plain_run_after_interrupted_resume_is_not_replaced_by_a_later_resume(
    make_scene, tiny_model, tmp_path
) -> None:
    scene = make_scene(320, 192)
    out = tmp_path / "out"
    resume = ClassifyOptions(out_dir=out, device="cpu", batch_size=2, workers=0, resume=True)
    interrupted_run(scene, tiny_model, resume, after=7)
    assert journal_dir(scene, out).exists()
    # A plain run writes newer outputs: the older run's journal goes with it.
    classify_scene(scene, tiny_model, ClassifyOptions(out_dir=out, device="cpu", stride=32))
    assert not journal_dir(scene, out).exists()
    newer = (out / "scene_classes.tif").read_bytes()
    with pytest.raises(OutputError, match="exists"):
        classify_scene(scene, tiny_model, resume)
    assert (out / "scene_classes.tif").read_bytes() == newer
    # Outputs next to an incomplete journal are refused too (not the journal's run's).
    interrupted_run(scene, tiny_model, ClassifyOptions(**{**resume.__dict__, "overwrite": True}), 7)
    with pytest.raises(OutputError, match="exists"):
        classify_scene(scene, tiny_model, resume)
    assert (out / "scene_classes.tif").read_bytes() == newer


def test_stale_temporaries_of_killed_runs_are_removed_by_any_scene(
    make_scene, tiny_model, tmp_path
) -> None:
    scene = make_scene(64, 64, name="other.tif")
    out = tmp_path / "out"
    out.mkdir()
    dead = 2**22 + 12345  # above the default pid_max: never a live process
    stale = [
        out / f".scene.{dead}.partial.gpkg",
        out / f".scene.{dead}.partial.gpkg-journal",
        out / f".scene_classes.{dead}.partial.tif",
        out / f".scene_classes.{dead}.partial.tif.aux.xml",
    ]
    for path in stale:
        path.write_bytes(b"half")
    live = out / f".scene.{os.getpid()}.partial.gpkg"  # a running process's: kept
    live.write_bytes(b"being written")
    classify_scene(scene, tiny_model, ClassifyOptions(out_dir=out, device="cpu"))
    assert [p.name for p in stale if p.exists()] == []
    assert live.exists() and (out / "other.gpkg").exists()


def test_two_runs_of_one_scene_at_once_do_not_both_write(
    make_scene, tiny_checkpoint, tmp_path
) -> None:
    scene = make_scene(384, 128)  # 12 tiles
    out = tmp_path / "out"
    base = ["classify", scene, "-m", tiny_checkpoint, "-o", out, "--device", "cpu",
            "--workers", "1", "--quiet"]  # fmt: skip
    release = tmp_path / "release"
    first = start(base, tmp_path / "reads1.txt", 0.0, hold=release)  # waits at its first tile
    wait_for(lambda: len(lines(tmp_path / "reads1.txt")) >= 1)
    seconds = [
        start([*base, *extra], tmp_path / "reads2.txt", 0.0)
        for extra in ([], ["--overwrite"], ["--stride", "32"])
    ]
    for second in seconds:
        _, err = second.communicate(timeout=120)
        assert second.returncode == 2, err
        assert "is being written by another run" in err
    assert first.poll() is None
    release.touch()
    _, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    assert lines(tmp_path / "reads2.txt") == []  # the second ones never read a tile
    assert sorted(p.name for p in out.iterdir()) == [
        "scene.gpkg", "scene_areas.csv", "scene_classes.qml", "scene_classes.tif",
        "scene_classes.tif.aux.xml", "scene_quicklook.png",
    ]  # fmt: skip
    # Once the first is done, the set exists: the plain refusal.
    again = start(base, tmp_path / "reads3.txt", 0.0)
    _, err = again.communicate(timeout=60)
    assert again.returncode == 2 and "exists; use --overwrite" in err


def test_a_journal_of_batch_16_continues_with_the_cpu_default(make_scene, tiny_model) -> None:
    """A journal from before ``batch_size`` defaulted by device (16, given) still fits a
    CPU run that leaves it unset; another batch size does not."""
    from mscn_geo.options import ClassifyOptions
    from mscn_geo.plan import plan_scene
    from mscn_geo.resume import run_fingerprint

    scene = make_scene(128, 128)
    auto = ClassifyOptions(device="cpu")
    plan = plan_scene(scene, tiny_model.meta, auto)
    sixteen = run_fingerprint(scene, plan, tiny_model, ClassifyOptions(device="cpu", batch_size=16))
    assert run_fingerprint(scene, plan, tiny_model, auto) == sixteen
    eight = run_fingerprint(scene, plan, tiny_model, ClassifyOptions(device="cpu", batch_size=8))
    assert eight["options"]["batch_size"] == 8 != sixteen["options"]["batch_size"]
