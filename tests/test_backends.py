"""Inference backends: choice, ONNX Runtime parity with PyTorch, the export cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mscn_geo import backends
from mscn_geo.backends import prepare_runner, resolve_backend
from mscn_geo.errors import OptionError
from mscn_geo.models import load_checkpoint
from mscn_geo.options import ClassifyOptions
from mscn_geo.pipeline import Normaliser, prepare_model
from tests.conftest import classify_and_read

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
CPU = torch.device("cpu")


def test_auto_is_onnxruntime_for_cpu_fp32_and_torch_otherwise():
    assert resolve_backend("auto", CPU, None) == "onnxruntime"
    assert resolve_backend("auto", CPU, torch.bfloat16) == "torch"
    assert resolve_backend("auto", torch.device("cuda"), torch.bfloat16) == "torch"
    assert resolve_backend("auto", torch.device("cuda"), None) == "torch"
    assert resolve_backend(" Torch ", CPU, None) == "torch"


@pytest.mark.parametrize(
    ("name", "device", "amp", "message"),
    [
        ("tensorrt", "cpu", None, "^backend must be one of auto, torch, onnxruntime"),
        ("onnxruntime", "cuda", None, "runs on the CPU only"),
        ("onnxruntime", "cpu", torch.bfloat16, "fp32 only"),
    ],
)
def test_bad_backend_choices_are_option_errors(name, device, amp, message):
    with pytest.raises(OptionError, match=message):
        resolve_backend(name, torch.device(device), amp)


def test_options_check_rejects_an_unknown_backend():
    with pytest.raises(OptionError, match=r"^backend must be one of"):
        ClassifyOptions(backend="tflite").check()


def test_onnxruntime_runner_matches_torch_including_masked_pixels(tiny_checkpoint):
    model = load_checkpoint(tiny_checkpoint)
    torch_runner = prepare_model(load_checkpoint(tiny_checkpoint).model, CPU, None)
    runner = prepare_runner(model, CPU, None, backend="onnxruntime")
    assert not runner.channels_last and runner.amp is None
    rng = np.random.default_rng(0)
    pixels = [rng.integers(0, 256, (3, 64, 64), dtype=np.uint8) for _ in range(5)]
    valid = [np.ones((64, 64), bool) for _ in range(5)]
    valid[1][:, :40] = False  # nodata on part of a tile: 0 after normalising
    with torch.inference_mode():
        ref = torch_runner(Normaliser(model.meta, CPU, channels_last=True)(pixels, valid))
        # As the loop feeds it: pixel units, nodata at the band mean ...
        assert runner.pixel_input
        got = runner(Normaliser(model.meta, CPU, pixel_units=True)(pixels, valid))
        # ... or normalised, like the PyTorch runner.
        got_normalised = runner.normalised(Normaliser(model.meta, CPU)(pixels, valid))
    assert got.shape == (5, 3) and got.dtype == torch.float32
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(got_normalised, ref, atol=1e-5, rtol=1e-4)


def test_graph_is_exported_once_then_loaded_from_the_cache(tiny_checkpoint, monkeypatch):
    prepare_runner(load_checkpoint(tiny_checkpoint), CPU, None, backend="onnxruntime")

    def no_export(*args, **kwargs):
        raise AssertionError("exported again although the cache has the graph")

    monkeypatch.setattr("mscn_geo.onnx_export.export_onnx", no_export)
    # Same weights, not yet built into a network: the same cache key.
    fresh = load_checkpoint(tiny_checkpoint)
    runner = prepare_runner(fresh, CPU, None, backend="onnxruntime")
    assert runner(torch.zeros(1, 3, 64, 64)).shape == (1, 3)
    with torch.no_grad():  # other weights: another graph
        fresh.model.head.bias.add_(1.0)
    backends._SESSIONS.pop(fresh)  # forget the session kept for this model
    with pytest.raises(AssertionError, match="exported again"):
        prepare_runner(fresh, CPU, None, backend="onnxruntime")


def test_classify_gives_the_same_outputs_with_both_backends(make_scene, tiny_model, tmp_path):
    scene = make_scene(320, 192, nodata_cols=70)
    res_t, frame_t, raster_t, _ = classify_and_read(
        scene, tiny_model, tmp_path / "t", backend="torch"
    )
    res_o, frame_o, raster_o, _ = classify_and_read(
        scene, tiny_model, tmp_path / "o", backend="onnxruntime"
    )
    assert res_t.classified == res_o.classified > 0
    np.testing.assert_array_equal(raster_o, raster_t)
    np.testing.assert_array_equal(frame_o["class_id"], frame_t["class_id"])
    np.testing.assert_allclose(frame_o["confidence"], frame_t["confidence"], atol=1e-5)


def test_onnxruntime_at_another_tile_size(make_scene, tiny_model, tmp_path):
    scene = make_scene(256, 128)
    _, frame_t, _, _ = classify_and_read(
        scene, tiny_model, tmp_path / "t", backend="torch", tile_size=32
    )
    _, frame_o, _, _ = classify_and_read(
        scene, tiny_model, tmp_path / "o", backend="onnxruntime", tile_size=32
    )
    assert len(frame_o) == 32
    np.testing.assert_allclose(frame_o["confidence"], frame_t["confidence"], atol=1e-5)


def test_a_cached_graph_runs_without_building_the_network(make_scene, tiny_checkpoint, tmp_path):
    """Start-up: with the graph in the cache, classify never imports torchvision."""
    import subprocess
    import sys

    scene = make_scene(192, 128)
    code = (
        "import sys; from pathlib import Path\n"
        "from mscn_geo.classify import classify_scene\n"
        "from mscn_geo.models import load_checkpoint\n"
        "from mscn_geo.options import ClassifyOptions\n"
        f"opts = ClassifyOptions(out_dir=Path({str(tmp_path / 'o')!r}), overwrite=True,"
        " device='cpu', backend='onnxruntime', quicklook=False)\n"
        f"r = classify_scene({str(scene)!r}, load_checkpoint({str(tiny_checkpoint)!r}), opts)\n"
        "print(r.classified, 'torchvision' in sys.modules)\n"
    )
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)]
    runs.append(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True))
    assert [r.returncode for r in runs] == [0, 0], runs[-1].stderr
    first, second = (r.stdout.split() for r in runs)
    assert first[0] == second[0] == "6"
    assert second[1] == "False"  # the first run may have exported (and built) it
