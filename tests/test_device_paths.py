"""The CUDA/AMP code paths, run on the CPU: device choice with CUDA mocked, the pinned
staging and delayed-collection branches of the loop, bf16 classify and train.

A GPU run must not be the first time these lines execute; the CUDA-only tests
(marked ``cuda``) cover the rest where a GPU exists.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mscn_geo import pipeline
from mscn_geo.backends import resolve_backend
from mscn_geo.device import amp_name, autocast_dtype, resolve_device
from mscn_geo.errors import OptionError
from mscn_geo.models import load_checkpoint
from mscn_geo.pipeline import Normaliser, classify_stream, prepare_model
from mscn_geo.reader import TilePixels
from mscn_geo.tiling import TileGrid
from tests.conftest import classify_and_read, colour_chips

RGB = ("red", "green", "blue")  # the order these tests' chips were drawn in

CPU = torch.device("cpu")


@pytest.fixture
def fake_cuda(monkeypatch):
    """torch.cuda says two GPUs are there (nothing is ever run on them)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)


def test_auto_picks_cuda_with_bf16_amp_and_the_torch_backend(fake_cuda):
    device = resolve_device("auto")
    assert device == torch.device("cuda")
    amp = autocast_dtype(device)  # ClassifyOptions.amp = None: AMP on for CUDA
    assert amp is torch.bfloat16 and amp_name(amp) == "bf16"
    assert autocast_dtype(device, amp=False) is None
    assert resolve_backend("auto", device, amp) == "torch"
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(OptionError, match="only 2 GPU"):
        resolve_device("cuda:2")


def test_fp16_where_the_gpu_has_no_bf16(fake_cuda, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert autocast_dtype(resolve_device("cuda")) is torch.float16


def test_without_cuda_auto_is_cpu_and_cuda_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == CPU
    assert autocast_dtype(CPU) is None and autocast_dtype(CPU, amp=True) is torch.bfloat16
    with pytest.raises(OptionError, match="no CUDA GPU is available"):
        resolve_device("cuda")


class _PinRecorder:
    """``torch.empty`` that records ``pin_memory=True`` requests and serves plain memory."""

    def __init__(self) -> None:
        self.pinned = 0
        self._empty = torch.empty

    def __call__(self, *args, pin_memory: bool = False, **kwargs):
        self.pinned += bool(pin_memory)
        return self._empty(*args, **kwargs)


def test_pinned_staging_gives_the_same_batch(tiny_model, monkeypatch):
    rng = np.random.default_rng(0)
    pixels = [rng.integers(0, 256, (3, 64, 64), dtype=np.uint8) for _ in range(3)]
    valid = [rng.random((64, 64)) > 0.2 for _ in range(3)]
    plain = Normaliser(tiny_model.meta, CPU, pin_memory=False)(pixels, valid)
    recorder = _PinRecorder()
    monkeypatch.setattr(pipeline.torch, "empty", recorder)
    pinned = Normaliser(tiny_model.meta, CPU, pin_memory=True)(pixels, valid)
    assert recorder.pinned == 2  # the pixel and the validity buffers
    torch.testing.assert_close(pinned, plain)


class _FakeEvent:
    recorded = 0
    synchronized = 0

    def record(self) -> None:
        type(self).recorded += 1

    def synchronize(self) -> None:
        type(self).synchronized += 1


def test_cuda_branch_of_the_loop_collects_every_batch_in_order(tiny_model, monkeypatch):
    """The device-ahead path (pinned result copies, events, results one batch late)."""
    grid = TileGrid(64 * 5, 64, 64, 64)
    rng = np.random.default_rng(1)
    items = [
        TilePixels(
            t, rng.integers(1, 256, (3, 64, 64), dtype=np.uint8), np.ones((64, 64), bool), 0.0
        )
        for t in grid.iter_tiles(0, len(grid))
    ]
    runner = prepare_model(tiny_model.model, CPU, None)
    norm = Normaliser(tiny_model.meta, CPU, channels_last=True)
    with torch.inference_mode():
        expected = list(classify_stream(iter(items), runner, norm, 2))

    cuda_like = pipeline.ModelRunner(runner.net, torch.device("cuda"), None, True)
    monkeypatch.setattr(pipeline.torch, "empty", _PinRecorder())
    monkeypatch.setattr(pipeline.torch.cuda, "Event", _FakeEvent)
    _FakeEvent.recorded = _FakeEvent.synchronized = 0
    with torch.inference_mode():
        got = list(classify_stream(iter(items), cuda_like, norm, 2))
    assert _FakeEvent.recorded == _FakeEvent.synchronized == 3  # batches of 2, 2, 1
    assert [t for b in got for t in b.tiles] == [t for b in expected for t in b.tiles]
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_allclose(a.probs, b.probs, atol=1e-6)


def test_bf16_classify_on_cpu_agrees_with_fp32(make_scene, tmp_path):
    # The bundled (trained) model: a random one is too flat for a tolerance to mean much.
    model = load_checkpoint()
    scene = make_scene(768, 512, nodata_cols=100)
    fp32, frame32, _, _ = classify_and_read(scene, model, tmp_path / "a", backend="torch")
    bf16, frame16, _, _ = classify_and_read(scene, model, tmp_path / "b", amp=True)
    assert bf16.amp == "bf16" and fp32.amp == "off"
    assert bf16.classified == fp32.classified == 6
    names = [f"p_{c}" for c in model.meta.class_names]
    diff = np.abs(frame16[names].to_numpy() - frame32[names].to_numpy())
    assert diff.max() < 0.15  # bf16 on the bundled model: <= 0.09 on UC Merced tiles
    np.testing.assert_array_equal(frame16["class_id"], frame32["class_id"])


def test_bf16_training_on_cpu_tracks_fp32(tmp_path):
    import json

    from mscn_geo.training import TrainConfig, train

    data = colour_chips(tmp_path / "chips", per_class=4, order=RGB)
    losses = {}
    for amp in (False, True):
        cfg = TrainConfig(
            arch="resnet18", input_size=32, epochs=2,
            batch_size=6, lr=3e-3, warmup_epochs=1, randaugment_magnitude=0,
            val_fraction=0.34, ema_decay=0.0, last_every_min=0.0, device="cpu", amp=amp,
        )  # fmt: skip
        out = tmp_path / f"amp_{amp}" / "model.pt"
        train(out, cfg, data_dir=data)
        log = (out.parent / "model_log.jsonl").read_text().splitlines()
        losses[amp] = [json.loads(line)["train_loss"] for line in log]
    assert all(np.isfinite(losses[True]))
    # Same seed, same batches: the first epoch's loss differs only by bf16 rounding.
    assert losses[True][0] == pytest.approx(losses[False][0], rel=0.05)
    assert losses[True][1] == pytest.approx(losses[False][1], rel=0.2)


def test_batch_size_and_workers_default_by_device(monkeypatch):
    """Not given: the configuration the benchmarks ran at on each device (16 tiles and
    2 readers on CPU, 128 and 8 on CUDA, never more readers than CPUs); given: as given."""
    from mscn_geo.options import ClassifyOptions

    monkeypatch.setattr("os.cpu_count", lambda: 16)
    auto = ClassifyOptions()
    assert (auto.batch_size_for("cpu"), auto.workers_for("cpu")) == (16, 2)
    assert (auto.batch_size_for("cuda"), auto.workers_for("cuda")) == (128, 8)
    monkeypatch.setattr("os.cpu_count", lambda: 4)
    assert auto.workers_for("cuda") == 4
    given = ClassifyOptions(batch_size=5, workers=0)
    assert (given.batch_size_for("cuda"), given.workers_for("cuda")) == (5, 0)
    with pytest.raises(OptionError, match="batch_size must be at least 1, got 0"):
        ClassifyOptions(batch_size=0).check()
