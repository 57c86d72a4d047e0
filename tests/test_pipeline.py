"""The streaming loop: same results whatever the threads and batches, bounded, in order."""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch

from mscn_geo.options import ClassifyOptions
from mscn_geo.pipeline import Normaliser, classify_stream, prepare_model, read_ahead
from mscn_geo.plan import plan_scene
from mscn_geo.predict import predict_tiles
from mscn_geo.reader import TilePixels, TileReader
from mscn_geo.tiling import Tile


def predict(scene: Path, model, **kwargs):
    options = ClassifyOptions(device="cpu", **kwargs)
    plan = plan_scene(scene, model.meta, options)
    result, _, _ = predict_tiles(plan.info, plan.grid, model, options)
    return result


@pytest.mark.parametrize("channels_last", [True, False])
def test_results_do_not_depend_on_workers_or_batch_size(
    make_scene, tiny_model, channels_last: bool
) -> None:
    # Nodata in the first columns: skipped tiles and tiles that need the mask.
    scene = make_scene(300, 200, nodata_cols=70)
    ref = predict(scene, tiny_model, workers=0, batch_size=1, channels_last=channels_last)
    assert (ref.class_ids == 255).sum() == 4  # column 0 of the 4 x 5 grid is all nodata
    np.testing.assert_allclose(np.nansum(ref.probs, axis=1)[ref.class_ids != 255], 1, atol=1e-5)
    for batch in (1, 7, 16):
        same_batch = predict(
            scene, tiny_model, workers=0, batch_size=batch, channels_last=channels_last
        )
        for workers in (1, 3) if batch == 7 else (2,):
            got = predict(
                scene, tiny_model, workers=workers, batch_size=batch, channels_last=channels_last
            )
            # Threads change only when a tile is read: the output is bit for bit the same.
            np.testing.assert_array_equal(got.probs, same_batch.probs)
            np.testing.assert_array_equal(got.class_ids, same_batch.class_ids)
            np.testing.assert_array_equal(got.nodata_fraction, ref.nodata_fraction)
            assert [(t.row, t.col) for t in got.tiles] == [(t.row, t.col) for t in ref.tiles]
        # Another batch size may pick another convolution blocking in oneDNN:
        # float rounding only (measured up to 1.4e-6 absolute), same classes.
        np.testing.assert_array_equal(same_batch.class_ids, ref.class_ids)
        np.testing.assert_allclose(same_batch.probs, ref.probs, atol=1e-6, rtol=1e-5)


def test_channels_last_gives_the_same_probabilities(make_scene, tiny_model) -> None:
    scene = make_scene(200, 130)
    # fp32 PyTorch: torch-bf16's kernels differ between memory formats (bf16 rounding).
    a = predict(scene, tiny_model, workers=2, batch_size=4, channels_last=True, backend="torch")
    b = predict(scene, tiny_model, workers=2, batch_size=4, channels_last=False, backend="torch")
    np.testing.assert_array_equal(a.class_ids, b.class_ids)
    np.testing.assert_allclose(a.probs, b.probs, atol=1e-5, rtol=0)


def test_padded_scene_matches_unbatched_reference(make_scene, tiny_model) -> None:
    scene = make_scene(40, 50)  # one padded tile: mask multiply path
    result = predict(scene, tiny_model, workers=2, batch_size=8, backend="torch")  # fp32
    options = ClassifyOptions(device="cpu")
    plan = plan_scene(scene, tiny_model.meta, options)
    with TileReader(plan.info, plan.grid.tile) as reader:
        item = reader.read(plan.grid.tiles()[0])
    meta = tiny_model.meta
    x = torch.from_numpy(item.pixels).float()[None] / 255.0
    x = (x - torch.tensor(meta.mean).view(1, -1, 1, 1)) / torch.tensor(meta.std).view(1, -1, 1, 1)
    x = x * torch.from_numpy(item.valid)[None, None]
    with torch.inference_mode():
        expected = torch.softmax(tiny_model.model.float()(x.contiguous()), dim=1).numpy()
    np.testing.assert_allclose(result.probs, expected, atol=1e-5)


class SlowReader:
    """Records how many reads are in flight; threads finish out of order."""

    def __init__(self, delay: float = 0.002) -> None:
        self.lock = threading.Lock()
        self.started = 0
        self.delay = delay
        self.rng = random.Random(0)

    def read(self, tile: Tile) -> Tile:
        with self.lock:
            self.started += 1
            pause = self.rng.random() * self.delay
        time.sleep(pause)
        return tile  # type: ignore[return-value]


@pytest.mark.parametrize(("workers", "depth"), [(1, 1), (2, 5), (4, 8), (3, 2)])
def test_read_ahead_is_bounded_and_in_order(workers: int, depth: int) -> None:
    reader = SlowReader()
    tiles = [Tile(i, 0, None, False) for i in range(60)]  # type: ignore[arg-type]
    seen = []
    for consumed, tile in enumerate(read_ahead(reader, tiles, workers=workers, depth=depth)):
        time.sleep(0.003)  # a slow consumer: readers would run ahead if unbounded
        with reader.lock:
            # reads started beyond those handed out (this one included): at most depth
            assert reader.started - (consumed + 1) <= depth
        seen.append(tile.row)
    assert seen == list(range(60))


def test_read_ahead_raises_in_turn_and_stops_reading() -> None:
    class Failing(SlowReader):
        def read(self, tile: Tile) -> Tile:
            if tile.row == 5:
                raise OSError("bad block")
            return super().read(tile)

    reader = Failing()
    tiles = [Tile(i, 0, None, False) for i in range(100)]  # type: ignore[arg-type]
    got = []
    with pytest.raises(OSError, match="bad block"):
        for tile in read_ahead(reader, tiles, workers=2, depth=4):
            got.append(tile.row)
    assert got == [0, 1, 2, 3, 4]
    assert reader.started <= 5 + 4  # nothing read after the pool shut down


def test_normaliser_matches_the_formula(tiny_model) -> None:
    meta = tiny_model.meta
    rng = np.random.default_rng(0)
    pixels = [rng.integers(0, 256, (3, 8, 8), dtype=np.uint8) for _ in range(3)]
    valid = [rng.random((8, 8)) > 0.3 for _ in range(3)]
    mean = np.array(meta.mean, np.float32)[None, :, None, None]
    std = np.array(meta.std, np.float32)[None, :, None, None]
    expected = (np.stack(pixels) / 255.0 - mean) / std
    for channels_last in (False, True):
        norm = Normaliser(meta, torch.device("cpu"), channels_last=channels_last)
        x = norm(pixels, valid)
        assert x.dtype == torch.float32 and x.shape == (3, 3, 8, 8)
        assert x.is_contiguous(memory_format=torch.channels_last) == channels_last
        np.testing.assert_allclose(x.numpy(), expected * np.stack(valid)[:, None], atol=1e-5)
        np.testing.assert_allclose(norm(pixels, None).numpy(), expected, atol=1e-5)


def test_classify_stream_batches_readable_tiles_only(tiny_model) -> None:
    device = torch.device("cpu")
    runner = prepare_model(tiny_model.model, device, None)
    sizes: list[int] = []
    real = runner.net

    def counting(x: torch.Tensor) -> torch.Tensor:
        sizes.append(x.shape[0])
        return real(x)

    runner.net = counting
    try:
        rng = np.random.default_rng(1)
        items = []
        for i in range(11):
            tile = Tile(i, 0, None, False)  # type: ignore[arg-type]
            if i % 4 == 0:
                items.append(TilePixels(tile, None, None, 1.0))
            else:
                px = rng.integers(1, 256, (3, 64, 64), dtype=np.uint8)
                items.append(TilePixels(tile, px, np.ones((64, 64), bool), 0.0))
        skipped: list[int] = []
        norm = Normaliser(tiny_model.meta, device, runner.channels_last)
        with torch.inference_mode():
            out = list(
                classify_stream(iter(items), runner, norm, 3, lambda t: skipped.append(t.tile.row))
            )
    finally:
        runner.net = real
    assert skipped == [0, 4, 8]
    assert sizes == [3, 3, 2]
    rows = [t.row for batch in out for t in batch.tiles]
    assert rows == [1, 2, 3, 5, 6, 7, 9, 10]
    probs = np.concatenate([b.probs for b in out])
    np.testing.assert_allclose(probs.sum(axis=1), 1, atol=1e-5)


def test_block_cache_cap_only_grows_so_concurrent_readers_keep_theirs(
    make_scene, tiny_model, monkeypatch
) -> None:
    from mscn_geo import reader

    monkeypatch.delenv("GDAL_CACHEMAX", raising=False)
    saved = rasterio.env.get_gdal_config("GDAL_CACHEMAX")
    monkeypatch.setattr(reader, "_CACHE_CAP", reader._BlockCacheCap())  # a fresh process
    gdal_default = 1_200 * 2**20  # GDAL's 5% of 24 GB
    rasterio.env.set_gdal_config("GDAL_CACHEMAX", gdal_default)
    try:
        plan = plan_scene(make_scene(200, 130), tiny_model.meta, ClassifyOptions(device="cpu"))
        small = TileReader(plan.info, plan.grid.tile)  # small scene: the 64 MiB floor
        assert rasterio.env.get_gdal_config("GDAL_CACHEMAX") == 64 * 2**20
        wide = reader.cap_block_cache(30_000, 3, 1, 256)  # a 30k px scene opened meanwhile
        assert wide == rasterio.env.get_gdal_config("GDAL_CACHEMAX") == 2 * 512 * 30_000 * 3
        small.close()  # closing the first reader does not shrink the second's cache
        assert rasterio.env.get_gdal_config("GDAL_CACHEMAX") == wide
        assert reader.cap_block_cache(200, 3, 1, 256) == wide
        assert reader.cap_block_cache(10**6, 3, 1, 256) == 2**30  # the 1 GiB ceiling
        monkeypatch.setenv("GDAL_CACHEMAX", "512")  # the user's choice wins
        rasterio.env.set_gdal_config("GDAL_CACHEMAX", 512 * 2**20)
        assert reader.cap_block_cache(200, 3, 1, 256) is None
        assert rasterio.env.get_gdal_config("GDAL_CACHEMAX") == 512 * 2**20
    finally:
        rasterio.env.set_gdal_config("GDAL_CACHEMAX", saved)


def test_prepare_model_leaves_the_callers_model_untouched(tiny_model) -> None:
    model = tiny_model.model.train()
    state = {k: (v.clone(), v.stride(), v.device) for k, v in model.state_dict().items()}
    attributes = dict(model.__dict__)
    runner = prepare_model(model, torch.device("cpu"), None, channels_last=True)
    x = torch.rand(2, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        probs = runner(x)
    assert model.training and all(m.training for m in model.modules())
    assert dict(model.__dict__).keys() == attributes.keys()
    assert all(model.__dict__[k] is v for k, v in attributes.items())
    for name, value in model.state_dict().items():
        before, stride, device = state[name]
        assert value.stride() == stride and value.device == device
        assert torch.equal(value, before)
    assert all(p.requires_grad for p in model.parameters())
    # The runner evaluates the same weights, in eval mode.
    with torch.inference_mode():
        expected = torch.softmax(model.eval()(x.contiguous()), dim=1)
    torch.testing.assert_close(probs, expected, atol=1e-5, rtol=1e-4)
