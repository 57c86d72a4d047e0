"""Classify on a Dask LocalCluster (2 worker processes, 1 thread each): same outputs as a
local run, tiles merged exactly once, a killed worker's tasks re-run elsewhere."""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
import time
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest

from mscn_geo.batch import classify_scenes
from mscn_geo.classify import classify_scene
from mscn_geo.errors import InputError, OptionError, OutputError
from mscn_geo.options import ClassifyOptions
from mscn_geo.plan import plan_scene
from mscn_geo.tiling import TileGrid

distributed = pytest.importorskip("distributed")

from mscn_geo import distributed as dist  # noqa: E402


@pytest.fixture(scope="module")
def client():
    import logging

    saved_environ = dict(os.environ)
    cluster = distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,
        silence_logs=logging.ERROR,
        preload=["mscn_geo.distributed"],  # as dist.local_cluster: torch imported at start
    )
    with cluster, distributed.Client(cluster) as c:
        c.wait_for_workers(2, timeout=60)
        yield c
    # Starting a LocalCluster sets OMP/MKL/OPENBLAS_NUM_THREADS=1 in this
    # process's environment (for its workers); later tests' subprocesses would
    # inherit it and round differently from in-process runs.
    os.environ.clear()
    os.environ.update(saved_environ)


def _options(out: Path, **kw: object) -> ClassifyOptions:
    return ClassifyOptions(device="cpu", batch_size=4, workers=0, out_dir=out, **kw)  # type: ignore[arg-type]


def _local(scene: Path, model, out: Path) -> None:
    classify_scene(scene, model, _options(out))


def _cluster(scenes, model, out: Path, client, **kw):
    return list(
        dist.classify_scenes_on_cluster(
            list(scenes), model, _options(out), client=client, torch_threads=1, **kw
        )
    )


def _assert_same_outputs(scene: Path, a: Path, b: Path) -> None:
    stem = scene.stem
    ra, rb = a / f"{stem}_classes.tif", b / f"{stem}_classes.tif"
    assert ra.read_bytes() == rb.read_bytes()
    ga, gb = (
        gpd.read_file(a / f"{stem}.gpkg", layer="tiles"),
        gpd.read_file(b / f"{stem}.gpkg", layer="tiles"),
    )
    assert len(ga) == len(gb) > 0
    assert list(ga.columns) == list(gb.columns)
    assert ga.crs == gb.crs
    np.testing.assert_array_equal(ga["row"], gb["row"])
    np.testing.assert_array_equal(ga["col"], gb["col"])
    np.testing.assert_array_equal(ga["class_id"], gb["class_id"])
    probs = [c for c in ga.columns if c.startswith("p_")]
    np.testing.assert_allclose(ga[probs].to_numpy(), gb[probs].to_numpy(), atol=1e-6)
    np.testing.assert_allclose(ga[probs].to_numpy().sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(ga["nodata_fraction"], gb["nodata_fraction"])
    assert ga.geometry.geom_equals_exact(gb.geometry, tolerance=0).all()


def test_cluster_run_matches_local_run(client, make_scene, tiny_checkpoint, tmp_path) -> None:
    from mscn_geo.models import load_checkpoint

    model = load_checkpoint(tiny_checkpoint)
    # 7 x 6 tiles, a nodata strip (skipped tiles), last row/col shifted inward.
    big = make_scene(400, 330, name="big.tif", nodata_cols=70)
    small = make_scene(200, 130, name="small.tif", seed=3)
    _local(big, model, tmp_path / "local")
    _local(small, model, tmp_path / "local")
    seen: list[tuple[int, int]] = []
    outcomes = _cluster(
        [big, small],
        model,
        tmp_path / "dask",
        client,
        tiles_per_task=14,  # 3 blocks of 2 tile rows for the big scene
        progress_for=_recorder(seen),
    )
    assert [o.status for o in outcomes] == ["ok", "ok"]
    assert [o.scene for o in outcomes] == [big, small]
    for scene in (big, small):
        _assert_same_outputs(scene, tmp_path / "local", tmp_path / "dask")
    first = outcomes[0].to_dict()
    assert first["tiles"] == 42 and first["skipped"] == 6  # the 70 px nodata strip
    assert first["classified"] + first["skipped"] == first["tiles"]
    assert first["outputs"]["gpkg"] == str(tmp_path / "dask" / "big.gpkg")
    assert first["device"] == "cpu"
    # Whole-job progress: monotonic, ends at all tiles of both scenes.
    total = 42 + 4 * 3
    assert seen[-1] == (total, total)
    assert all(t == total for _, t in seen)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert not list((tmp_path / "dask").glob(".*partial*"))


def _recorder(seen: list[tuple[int, int]]):
    import contextlib

    @contextlib.contextmanager
    def progress_for(label: Path):
        assert label == Path("2 scenes")
        yield lambda done, total: seen.append((done, total))

    return progress_for


def test_merge_blocks_refuses_lost_or_duplicated_tiles(make_scene, tiny_model) -> None:
    scene = make_scene(256, 256)
    grid = plan_scene(scene, tiny_model.meta, _options(Path("."))).grid  # 4 x 4 tiles

    def block(rows: list[int]) -> dist.BlockResult:
        m = 4 * len(rows)
        return dist.BlockResult(
            rows=np.repeat(np.array(rows, np.int32), 4),
            cols=np.tile(np.arange(4, dtype=np.int32), len(rows)),
            class_ids=np.repeat(np.array(rows, np.uint8), 4),
            probs=np.full((m, 3), 1 / 3, np.float32),
            nodata_fraction=np.zeros(m, np.float32),
            device=None,  # type: ignore[arg-type]
            amp=None,
            seconds=0.0,
            pid=0,
        )

    merged = dist.merge_blocks(grid, [block([2, 3]), block([0, 1])], 3)
    assert merged.class_ids.tolist() == [0] * 4 + [1] * 4 + [2] * 4 + [3] * 4
    assert [(t.row, t.col) for t in merged.tiles] == [(t.row, t.col) for t in grid.tiles()]
    with pytest.raises(dist.ClusterError, match=r"0 tile.* missing and 4 duplicated"):
        dist.merge_blocks(grid, [block([0, 1, 2]), block([2, 3])], 3)  # row 2 twice
    with pytest.raises(dist.ClusterError, match=r"4 tile.* missing and 0 duplicated"):
        dist.merge_blocks(grid, [block([0, 1, 2])], 3)  # row 3 lost


def test_killed_worker_tasks_rerun_elsewhere(client, make_scene, tiny_checkpoint, tmp_path):
    from mscn_geo.models import load_checkpoint

    model = load_checkpoint(tiny_checkpoint)
    scene = make_scene(384, 384, name="kill.tif", nodata_cols=40)  # 6 x 6 tiles
    _local(scene, model, tmp_path / "local")
    pids_before = client.run(os.getpid)
    result: dict[str, object] = {}

    def slow_tasks(seconds: float) -> None:
        # Runs in each worker: its blocks take ``seconds`` longer (so one can be
        # killed mid-task); 0 puts the real function back.
        import time

        import mscn_geo.distributed as d

        real = d.__dict__.setdefault("_real_predict_tiles", d.predict_tiles)

        def slow(*args, **kwargs):
            time.sleep(seconds)
            return real(*args, **kwargs)

        d.predict_tiles = slow if seconds else real

    def run() -> None:
        try:
            result["outcomes"] = _cluster(
                [scene], model, tmp_path / "dask", client, tiles_per_task=6
            )
        except BaseException as exc:  # re-raised in the test thread
            result["error"] = exc

    client.run(slow_tasks, 0.25)

    thread = threading.Thread(target=run)
    thread.start()
    # Kill (SIGKILL) a worker while it runs one of our tasks.
    killed = None
    deadline = time.monotonic() + 20
    while killed is None and time.monotonic() < deadline:
        for addr, keys in client.processing().items():
            if any("mscn-geo" in str(k) for k in keys) and addr in pids_before:
                time.sleep(0.1)  # inside the task's sleep
                os.kill(pids_before[addr], signal.SIGKILL)
                killed = addr
                break
        time.sleep(0.02)
    thread.join(60)
    client.run(slow_tasks, 0.0)
    assert killed is not None, "no task seen running"
    assert not thread.is_alive()
    if "error" in result:
        raise result["error"]  # type: ignore[misc]
    (outcome,) = result["outcomes"]  # type: ignore[misc]
    assert outcome.status == "ok"
    _assert_same_outputs(scene, tmp_path / "local", tmp_path / "dask")


def test_errors_are_per_scene_and_leave_nothing(
    client, make_scene, tiny_checkpoint, tmp_path
) -> None:
    from mscn_geo.models import load_checkpoint

    model = load_checkpoint(tiny_checkpoint)
    good = make_scene(200, 200, name="good.tif")
    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"not a raster")
    out = tmp_path / "out"
    outcomes = _cluster([bad, good], model, out, client, keep_going=True)
    assert [o.status for o in outcomes] == ["error", "ok"]
    assert isinstance(outcomes[0].error, InputError)
    assert sorted(p.name for p in out.iterdir()) == [
        "good.gpkg",
        "good_areas.csv",
        "good_classes.qml",
        "good_classes.tif",
        "good_classes.tif.aux.xml",
        "good_quicklook.png",
    ]
    # Outputs exist: refused before any work is sent, as in a local run.
    with pytest.raises(OutputError, match="exists"):
        _cluster([good], model, out, client)
    skipped = _cluster([good], model, out, client, skip_existing=True)
    assert [o.status for o in skipped] == ["skipped"]
    local = list(classify_scenes([good], model, _options(out), skip_existing=True))
    assert [o.to_dict() for o in local] == [o.to_dict() for o in skipped]


def test_options_and_cluster_specs(tiny_model, tmp_path) -> None:
    assert dist.parse_cluster("local") is None
    assert dist.parse_cluster("local:3") == 3
    for bad in ("local:0", "local:x", "yarn", "tcp://x:8786"):
        with pytest.raises(OptionError):
            dist.parse_cluster(bad)
    with pytest.raises(OptionError, match="one of"), dist.connect():
        pass
    in_memory = dataclasses.replace(tiny_model, path=None)
    with pytest.raises(OptionError, match="checkpoint file"):
        list(dist.classify_scenes_on_cluster([tmp_path / "a.tif"], in_memory, _options(tmp_path)))
    with pytest.raises(OptionError, match="resume=True is not supported"):
        list(
            dist.classify_scenes_on_cluster(
                [tmp_path / "a.tif"], tiny_model, _options(tmp_path, resume=True)
            )
        )


def test_a_100000_px_scene_is_planned_by_arithmetic() -> None:
    # 391 x 391 = 152,881 tiles; planning lays out no tile, a task only its own.
    grid = TileGrid(100_000, 100_000, 256, 256)
    per_task = dist.tiles_per_task(len(grid), 8)
    assert per_task == dist.MAX_TILES_PER_TASK
    blocks = dist.block_rows(grid, per_task)
    assert len(blocks) == 391 and blocks[0] == (0, 1) and blocks[-1] == (390, 391)
    assert sum(dist.block_tiles(grid, b) for b in blocks) == len(grid) == 391 * 391
    last = list(grid.row_tiles(390, 391))
    assert len(last) == 391 and (last[0].row, last[0].col) == (390, 0)
    # The last row and column are shifted inward to end on the scene edge.
    w = last[-1].window
    assert (w.col_off, w.row_off, w.width, w.height) == (99_744, 99_744, 256, 256)
    w = last[-2].window
    assert (w.col_off, w.row_off) == (389 * 256, 99_744)


def test_block_sizes(make_scene, tiny_model) -> None:
    grid = plan_scene(make_scene(640, 320), tiny_model.meta, _options(Path("."))).grid
    assert grid.shape == (5, 10)
    assert dist.block_rows(grid, 20) == [(0, 2), (2, 4), (4, 5)]
    assert dist.block_rows(grid, 1) == [(r, r + 1) for r in range(5)]
    assert dist.block_rows(grid, 1000) == [(0, 5)]
    assert dist.tiles_per_task(10, 2) == dist.MIN_TILES_PER_TASK
    assert dist.tiles_per_task(10**6, 2) == dist.MAX_TILES_PER_TASK
    assert dist.tiles_per_task(1600, 2) == 200


def test_cli_scheduler_option(
    client, make_scene, tiny_checkpoint, tmp_path, capsys, monkeypatch
) -> None:
    import json

    from mscn_geo_cli.main import main

    scene = make_scene(200, 200)
    common = ["-m", str(tiny_checkpoint), "--device", "cpu", "--json", "-q"]
    assert main(["classify", str(scene), "-o", str(tmp_path / "l"), *common]) == 0
    capsys.readouterr()
    address = client.scheduler.address
    code = main(
        ["classify", str(scene), "-o", str(tmp_path / "d"), *common, "--scheduler", address]
    )
    out = capsys.readouterr()
    assert code == 0, out.err
    (line,) = out.out.strip().splitlines()
    summary = json.loads(line)
    assert summary["status"] == "ok" and summary["tiles"] == 16 and summary["classified"] == 16
    _assert_same_outputs(scene, tmp_path / "l", tmp_path / "d")
    code = main(["classify", str(scene), "-m", str(tiny_checkpoint), "--cluster", "yarn"])
    assert code == 2
    assert "--cluster must be local" in capsys.readouterr().err
    monkeypatch.setattr(dist, "CONNECT_TIMEOUT", "1s")
    code = main(["classify", str(scene), *common, "--scheduler", "tcp://127.0.0.1:1"])
    assert code == 2
    assert "cannot reach the Dask scheduler" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_cluster_option(make_scene, tiny_checkpoint, tmp_path, capsys) -> None:
    import json

    from mscn_geo_cli.main import main

    scene = make_scene(200, 200)
    assert main(["classify", str(scene), "-m", str(tiny_checkpoint), "-o", str(tmp_path / "l"),
                 "--device", "cpu", "--json", "-q"]) == 0  # fmt: skip
    capsys.readouterr()
    code = main(["classify", str(scene), "-m", str(tiny_checkpoint), "-o", str(tmp_path / "d"),
                 "--device", "cpu", "--json", "-q", "--cluster", "local:1"])  # fmt: skip
    out = capsys.readouterr()
    assert code == 0, out.err
    (line,) = out.out.strip().splitlines()
    summary = json.loads(line)
    assert summary["status"] == "ok" and summary["tiles"] == 16
    _assert_same_outputs(scene, tmp_path / "l", tmp_path / "d")
    code = main(["classify", str(scene), "-m", str(tiny_checkpoint), "--cluster", "yarn"])
    assert code == 2
    assert "--cluster must be local" in capsys.readouterr().err
