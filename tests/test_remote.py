"""Remote scenes over HTTP (a Range server on 127.0.0.1): same outputs, few bytes, clear errors."""

from __future__ import annotations

import shutil
import socket
import uuid
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import rasterio.shutil
from mscn_geo_cli.main import main

from mscn_geo.batch import expand_scenes
from mscn_geo.classify import classify_scene
from mscn_geo.errors import InputError
from mscn_geo.options import ClassifyOptions
from mscn_geo.reader import TileReader, open_scene
from mscn_geo.remote import as_scene, is_remote, remote_access, scene_name, scene_stem
from mscn_geo.tiling import TileGrid
from tests.http_range_server import RangeServer


@pytest.fixture(autouse=True)
def short_network_timeouts(monkeypatch):
    """GDAL reads these from the environment; they win over mscn-geo's defaults."""
    for key, value in {
        "GDAL_HTTP_MAX_RETRY": "1",
        "GDAL_HTTP_RETRY_DELAY": "0.1",
        "GDAL_HTTP_TIMEOUT": "2",
        "GDAL_HTTP_CONNECTTIMEOUT": "2",
        "GDAL_HTTP_LOW_SPEED_TIME": "1",
    }.items():
        monkeypatch.setenv(key, value)


@pytest.fixture
def served(tmp_path, make_scene):
    """(server, cog): ``cog(width, height)`` -> the file name of a new COG the server serves."""
    root = tmp_path / "www"
    root.mkdir()

    def cog(width: int, height: int, noise: bool = False) -> str:
        src = make_scene(width, height, name=f"src-{uuid.uuid4().hex}.tif", nodata=None)
        if noise:  # incompressible pixels: the file is as large as its pixels
            with rasterio.open(src, "r+") as ds:
                rng = np.random.default_rng(0)
                ds.write(rng.integers(1, 255, (ds.count, height, width), dtype=np.uint8))
        # A new name per file: GDAL caches what it learnt about a URL per process.
        name = f"scene-{uuid.uuid4().hex[:8]}.tif"
        rasterio.shutil.copy(src, root / name, driver="COG", blocksize=64, compress="deflate")
        return name

    with RangeServer(root) as server:
        yield server, cog


def _options(out: Path, **kw) -> ClassifyOptions:
    return ClassifyOptions(out_dir=out, device="cpu", batch_size=4, **kw)


def test_scene_names_and_kinds():
    url = "https://example.com/data/tile%2001.tif?X-Amz-Signature=abc&x=1"
    assert is_remote(url) and is_remote("s3://bucket/a/b.tif") and is_remote("/vsis3/b/k.tif")
    assert is_remote("/vsicurl/http://h/x.TIF") and not is_remote("/data/x.tif")
    assert scene_name(url) == "tile 01.tif" and scene_stem(url) == "tile 01"
    assert scene_stem("s3://bucket/a/b.tif") == "b" == scene_stem("/vsis3/bucket/a/b.tif")
    assert scene_stem("/vsicurl/http://h/p/q.tif") == "q"
    assert as_scene(url) == url and isinstance(as_scene("x/y.tif"), Path)


def test_expand_scenes_passes_urls_through(tmp_path):
    local = tmp_path / "a.tif"
    local.write_bytes(b"")
    scenes = expand_scenes(["http://127.0.0.1:9/x/b.tif", "s3://bk/c.tif", str(local)])
    assert scenes == ["http://127.0.0.1:9/x/b.tif", "s3://bk/c.tif", local]


def test_remote_outputs_identical_to_local_file(served, tiny_model, tmp_path):
    server, cog = served
    name = cog(4 * 64, 3 * 64)
    local = classify_scene(server.root / name, tiny_model, _options(tmp_path / "local"))
    url = server.url(f"{name}?token=abc")  # outputs are named from the URL's file name
    remote = classify_scene(url, tiny_model, _options(tmp_path / "remote"))
    assert remote.scene == url and remote.classified == local.classified == 12
    for key in ("gpkg", "raster"):
        assert remote.outputs[key].name == local.outputs[key].name
    with rasterio.open(local.outputs["raster"]) as a, rasterio.open(remote.outputs["raster"]) as b:
        assert a.profile == b.profile
        np.testing.assert_array_equal(a.read(), b.read())
    frames = [gpd.read_file(r.outputs["gpkg"], layer="tiles") for r in (local, remote)]
    assert frames[0].drop(columns="geometry").equals(frames[1].drop(columns="geometry"))
    assert frames[0].geometry.equals(frames[1].geometry)
    assert server.bytes_sent > 0


def test_corner_read_fetches_a_small_fraction_of_the_file(served):
    server, cog = served
    name = cog(1536, 1024, noise=True)
    size = (server.root / name).stat().st_size
    assert size > 4_000_000
    url = server.url(name)
    with remote_access(url):
        info = open_scene(url, ["red", "green", "blue"])
        grid = TileGrid(info.width, info.height, 128, 128)
        server.reset_counts()
        with TileReader(info, 128) as reader:
            tiles = [t for t in grid.tiles() if t.row == 0 and t.col < 2]
            pixels = [reader.read(t).pixels for t in tiles]
    with rasterio.open(server.root / name) as ds:
        want = [ds.read(window=t.window) for t in tiles]
    for got, expected in zip(pixels, want, strict=True):
        np.testing.assert_array_equal(got, expected)
    # Two 128 px tiles are 8 of the file's 384 blocks: ~2% of the file.
    assert 0 < server.bytes_sent < 0.05 * size, (server.bytes_sent, size)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("http500", "the server answered HTTP 500 (after 1 retries)"),
        ("missing", "not found on the server (HTTP 404)"),
        ("forbidden", "access denied (HTTP 403)"),
        ("unreachable", "cannot reach the server"),
    ],
)
def test_http_errors_one_line_exit_2_nothing_left(
    case, expected, served, tiny_checkpoint, tmp_path, capsys
):
    server, cog = served
    url = server.url(cog(128, 128))
    if case == "http500":
        server.status = 500
    elif case == "forbidden":
        server.status = 403
    elif case == "missing":
        url = server.url("nothing-here.tif")
    else:
        url = f"http://127.0.0.1:{_free_port()}/scene.tif"
    out = tmp_path / "out"
    args = ["classify", url, "-m", str(tiny_checkpoint), "-o", str(out), "--device", "cpu"]
    assert main([*args, "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"mscn-geo: error: {url}: "), err
    assert expected in err[0], err
    assert not out.exists() or list(out.iterdir()) == []


@pytest.mark.parametrize("mode", ["fail", "stall"])
def test_server_failing_mid_run_gives_one_error_and_leaves_nothing(
    mode, served, tiny_model, tmp_path, monkeypatch
):
    server, cog = served
    monkeypatch.setenv("GDAL_HTTP_TIMEOUT", "1")
    name = cog(1024, 512, noise=True)  # 128 tiles: reads continue long after the first batch

    def progress(done: int, total: int) -> None:
        if done and server.fail_after is None and server.stall_after is None:
            if mode == "fail":
                server.fail_after = server.gets
            else:
                server.stall_after, server.stall_s = server.gets, 20.0

    out = tmp_path / "out"
    with pytest.raises(InputError) as caught:
        classify_scene(server.url(name), tiny_model, _options(out, workers=1), progress)
    message = str(caught.value)
    assert message.startswith(server.url(name))
    if mode == "fail":
        assert "the server answered HTTP 500 (after 1 retries)" in message
    else:
        assert "the server did not answer in time (after 1 retries)" in message
    assert list(out.iterdir()) == []  # no output, no temporary


def test_local_scene_errors_unchanged(tmp_path):
    with pytest.raises(InputError, match="scene not found"):
        open_scene(tmp_path / "missing.tif", ["red", "green", "blue"])
    shutil.rmtree(tmp_path)


def test_aoi_in_a_corner_fetches_a_small_fraction(served, tiny_model, tmp_path):
    """--aoi on a corner of a remote COG: only the blocks of the tiles it touches are fetched."""
    import geopandas as gpd
    from shapely.geometry import box

    server, cog = served
    name = cog(1536, 1024, noise=True)
    size = (server.root / name).stat().st_size
    with rasterio.open(server.root / name) as ds:
        x0, y1 = ds.transform * (0, 0)
        x1, y0 = ds.transform * (100, 100)  # the top-left 100 x 100 px: 4 tiles of 64 px
        crs = ds.crs
    aoi = tmp_path / "corner.geojson"
    gpd.GeoDataFrame(geometry=[box(x0, y0, x1, y1)], crs=crs).to_file(aoi)
    server.reset_counts()
    # The quicklook shows the whole scene: from a file without small enough
    # overviews it reads every block (README, "Remote scenes and STAC").
    options = _options(tmp_path / "out", aoi=aoi, quicklook=False)
    result = classify_scene(server.url(name), tiny_model, options)
    assert result.classified == 4
    assert 0 < server.bytes_sent < 0.1 * size, (server.bytes_sent, size)


def test_reduced_read_of_a_remote_scene_in_strips(served, make_scene):
    """The quicklook's reduced read opens one handle per strip: over HTTP too, the same
    pixels as one local read."""
    import shutil

    from rasterio.enums import Resampling

    from mscn_geo.io.decimated import read_decimated

    server, _ = served
    shutil.copy(make_scene(256, 192, nodata_cols=30), server.root / "plain.tif")
    with rasterio.open(server.root / "plain.tif") as ds:
        assert not ds.overviews(1)  # else GDAL reads an overview in one call
        want = ds.read([1, 2, 3], out_shape=(3, 40, 50), resampling=Resampling.average)
    before = server.bytes_sent
    url = server.url("plain.tif")
    got = read_decimated(url, [1, 2, 3], (40, 50), Resampling.average, threads=3)
    np.testing.assert_array_equal(got, want)
    assert server.bytes_sent > before
