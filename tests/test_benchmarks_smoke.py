"""Each benchmark at a tiny size: it runs, writes its JSON, and the figures are sane.

Speed targets are the benchmarks' business (``make bench``); here only the
plumbing and the meaning of the numbers are checked.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(BENCH))
    try:
        yield lambda name: importlib.import_module(name)
    finally:
        sys.path.remove(str(BENCH))


def check_machine(result: dict) -> None:
    """The machine record describes this machine, now (not placeholders)."""
    m = result["machine"]
    assert m["nproc"] == os.cpu_count() and m["device"] == "cpu"
    for loads in (m["load_before"], m["load_after"]):
        assert len(loads) == 3 and all(isinstance(x, float) and x >= 0 for x in loads)
    when = datetime.fromisoformat(m["date"])
    assert abs((datetime.now(timezone.utc) - when).total_seconds()) < 3600


def timed(run):
    """(result, wall seconds of the whole benchmark call)."""
    start = time.perf_counter()
    result = run()
    return result, time.perf_counter() - start


def test_pipeline_smoke(bench, tmp_path: Path) -> None:
    out = tmp_path / "pipeline.json"
    result, wall = timed(
        lambda: bench("bench_pipeline").main(
            [
                *("--size", "256", "--tile-size", "64", "--model", "random", "--rounds", "1"),
                *("--out", str(out)),
            ]
        )
    )
    assert json.loads(out.read_text()) == result
    check_machine(result)
    assert result["scene"]["tiles"] == 16
    assert result["scene"]["block_shape"] == [256, 256]
    (round_,) = result["rounds"]
    assert round_["model_only_tiles_per_s"] > 0 and round_["loop_tiles_per_s"] > 0
    assert 0 < round_["cpu_ratio"] < 10 and round_["loop_cpu_ms_per_tile"] > 0
    assert round_["ratio"] == pytest.approx(
        round_["loop_tiles_per_s"] / round_["model_only_tiles_per_s"], rel=0.01
    )
    # Rates in tiles per second: 16 tiles took at most the whole call (a unit slip fails).
    assert 16 / round_["loop_tiles_per_s"] < wall and 16 / round_["model_only_tiles_per_s"] < wall
    assert result["classify_scene"]["classified"] == 16
    assert result["target_met"] is (round_["ratio"] >= 0.85)  # the README's target


def test_scale_smoke(bench, tmp_path: Path) -> None:
    out = tmp_path / "scale.json"
    result, wall = timed(
        lambda: bench("bench_scale").main(["--sizes", "300", "600", "--out", str(out)])
    )
    check_machine(result)
    small, large = result["sizes"]
    assert (small["size_px"], large["size_px"]) == (300, 600)
    assert small["tiles"] == 4 and large["tiles"] == 9  # 256 px tiles, last ones shifted
    assert small["classified"] == 4 and large["classified"] == 9
    for row in (small, large):
        assert 50 < row["peak_rss_mb"] < 8192  # a real figure in MiB, not bytes or KiB
        assert row["pixels"] == row["size_px"] ** 2 and 0 < row["seconds"] < wall
        assert row["ns_per_pixel"] == pytest.approx(row["seconds"] / row["pixels"] * 1e9, rel=0.01)
        assert row["output_bytes"]["gpkg"] > 0 and row["output_bytes"]["raster"] > 0
    assert result["summary"]["largest_peak_rss_mb"] == large["peak_rss_mb"]
    assert result["summary"]["rss_target_met"] is (large["peak_rss_mb"] < 2048)


def test_torchgeo_smoke(bench, tmp_path: Path) -> None:
    pytest.importorskip("torchgeo.datasets")
    out = tmp_path / "torchgeo.json"
    args = ["--size", "256", "--tile-size", "64", "--rounds", "1", "--workers", "0"]
    result = bench("bench_torchgeo").main([*args, "--out", str(out)])
    check_machine(result)
    ours, theirs = result["rounds"]["ours"][0], result["rounds"]["torchgeo"][0]
    assert ours["tiles"] == theirs["tiles"] == 16  # the same grid on both sides
    assert result["max_probability_difference"] < 1e-4  # same model, same tiles
    assert result["speedup"] == pytest.approx(ours["tiles_per_s"] / theirs["tiles_per_s"], rel=0.01)
    assert ours["peak_rss_mb"] > 50 and theirs["peak_rss_mb"] > 50
    assert ours["cpu_ms_per_tile"] > 0 and theirs["cpu_ms_per_tile"] > 0
    assert result["cpu_speedup"] == pytest.approx(
        theirs["cpu_ms_per_tile"] / ours["cpu_ms_per_tile"], rel=0.02
    )


def test_overlap_smoke(bench, tmp_path: Path) -> None:
    module = bench("bench_overlap")
    if not module.UCMERCED.is_dir():
        pytest.skip(f"UC Merced not found at {module.UCMERCED} (../shared is optional)")
    out = tmp_path / "overlap.json"
    result = module.main(["--regions", "1", "--configs", "T", "--out", str(out)])
    assert json.loads(out.read_text()) == result
    check_machine(result)
    assert result["scene"]["size_px"] == 768 and result["scene"]["region_pixels"] == 512 * 512
    (run,) = result["runs"]
    assert run["stride"] == 256 and run["tiles"] == 9 and run["weighting"] == "uniform"
    assert 0 <= run["pixel_accuracy"] <= 1
    # At stride T every cell has one tile: the weightings cannot differ.
    assert set(run["pixel_accuracy_by_weighting"].values()) == {run["pixel_accuracy"]}


def test_run_all_plans_every_benchmark(bench) -> None:
    run_all = bench("run_all")
    for device in ("cpu", "cuda"):
        runs = run_all.plan(device, quick=False)
        scripts = {script for _, script, _ in runs}
        assert {"bench_pipeline.py", "bench_scale.py", "bench_torchgeo.py"} <= scripts
        assert all((BENCH / script).exists() for script in scripts)
        assert len({name for name, _, _ in runs}) == len(runs)


def test_reader_smoke(bench, tmp_path: Path) -> None:
    out = tmp_path / "reader.json"
    result = bench("bench_reader").main(
        ["--size", "512", "--workers", "1", "2", "--rounds", "1", "--out", str(out)]
    )
    check_machine(result)
    assert set(result["files"]) == {"deflate", "jpeg", "cog"}
    for entry in result["files"].values():
        assert entry["plain_tiles_per_s"] > 0
        one, two = entry["workers"]["1"], entry["workers"]["2"]
        assert two["per_worker_vs_plain"] == pytest.approx(two["vs_plain"] / 2, abs=2e-3)
        assert one["per_worker_vs_plain"] == pytest.approx(one["vs_plain"], abs=2e-3)
    feed = result["gpu_feed"]
    assert 4 < feed["model_gflops_per_tile"] < 7  # MSCN-ResNet18 at 256 px: 5.15 GFLOPs
    assert feed["reader_cores_needed"] >= 1


def test_quicklook_smoke(bench, tmp_path: Path) -> None:
    out = tmp_path / "quicklook.json"
    result = bench("bench_quicklook").main(["--size", "600", "--out", str(out)])
    assert json.loads(out.read_text()) == result
    check_machine(result)
    (run,) = result["runs"]
    assert run["overviews"] is True
    assert run["png_size"] == [600 + 300, 600]  # not enlarged, plus the legend panel
    assert run["seconds"] > 0 and 50 < run["peak_rss_mb"] < 8192
    assert run["warnings"] == []


def test_train_smoke(bench, tmp_path: Path) -> None:
    out = tmp_path / "train.json"
    result = bench("bench_train").main(
        ["--classes", "3", "--per-class", "10", "--size", "32", "--batch-size", "4",
         "--epochs", "2", "--arch", "resnet18", "--out", str(out)]
    )  # fmt: skip
    check_machine(result)
    assert json.loads(out.read_text())["runs"] == result["runs"]
    assert [r["amp"] for r in result["runs"]] == [True, False]
    for run in result["runs"]:
        # 30 chips, 20 % validation per class: 24 training chips = 6 steps of 4.
        assert run["steps_per_epoch"] == 6
        assert len(run["per_epoch_images_per_s"]) == 1 and run["train_images_per_s"] > 0
        assert 0 <= run["best_val_oa"] <= 1
