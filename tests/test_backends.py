"""Inference backends: choice, ONNX Runtime parity with PyTorch, the export cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mscn_geo import backends
from mscn_geo.backends import prepare_runner, resolve_backend
from mscn_geo.errors import OptionError
from mscn_geo.models import LoadedModel, load_checkpoint
from mscn_geo.options import ClassifyOptions
from mscn_geo.pipeline import Normaliser, prepare_model
from tests.conftest import ROOT, classify_and_read

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
CPU = torch.device("cpu")


@pytest.fixture
def bf16_cpu(monkeypatch):
    """Make the CPU answer ``native_bf16`` with the given bool."""

    def set_to(native: bool) -> None:
        monkeypatch.setattr(backends, "native_bf16", lambda *a, **k: native)

    return set_to


@pytest.mark.parametrize("native", [True, False])
def test_auto_picks_by_device_precision_model_and_cpu(native, bf16_cpu, tiny_model):
    bf16_cpu(native)
    # The model is asked by its architecture (tiny_model is an MSCN, not yet built) and
    # its checkpoint's bf16 record: it has none, so float32 (test_mixed_agreement.py).
    assert resolve_backend("auto", CPU, None, tiny_model) == "onnxruntime"
    assert resolve_backend("auto", CPU, None, load_checkpoint()) == (
        "torch-bf16" if native else "onnxruntime"
    )
    baseline = LoadedModel("resnet18", {}, tiny_model.meta, state={})  # no forward_mixed
    assert resolve_backend("auto", CPU, None, baseline) == "onnxruntime"
    assert resolve_backend("auto", CPU, None) == "onnxruntime"
    assert resolve_backend("auto", CPU, torch.bfloat16, tiny_model) == "torch"
    assert resolve_backend("auto", torch.device("cuda"), torch.bfloat16, tiny_model) == "torch"
    assert resolve_backend("auto", torch.device("cuda"), None, tiny_model) == "torch"
    assert resolve_backend(" Torch ", CPU, None, tiny_model) == "torch"


def test_native_bf16_reads_the_cpu_flags(tmp_path):
    cpus = {
        "bf16": "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 sha_ni\n",
        "vnni": "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_vnni\n",
        "amx": "flags\t\t: fpu amx_tile amx_bf16\n",
    }
    for name, text in cpus.items():
        (tmp_path / name).write_text(text)
    assert backends.native_bf16(tmp_path / "bf16")
    assert not backends.native_bf16(tmp_path / "vnni")
    assert backends.native_bf16(tmp_path / "amx")
    assert not backends.native_bf16(tmp_path / "missing")


@pytest.mark.parametrize(
    ("name", "device", "amp", "message"),
    [
        ("tensorrt", "cpu", None, "^backend must be one of auto, torch, torch-bf16, onnxruntime"),
        ("onnxruntime", "cuda", None, "runs on the CPU only"),
        ("onnxruntime", "cpu", torch.bfloat16, "sets its own precision"),
        ("torch-bf16", "cuda", None, "runs on the CPU only"),
        ("torch-bf16", "cpu", torch.bfloat16, "sets its own precision"),
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


def test_torch_bf16_needs_a_mixed_model_and_native_bf16(bf16_cpu, tiny_model):
    bf16_cpu(True)
    baseline = LoadedModel("resnet18", {}, tiny_model.meta, state={})
    with pytest.raises(OptionError, match=r"mixed precision \(MSCN\); resnet18 has none"):
        resolve_backend("torch-bf16", CPU, None, baseline)
    assert resolve_backend("torch-bf16", CPU, None, tiny_model) == "torch-bf16"
    bf16_cpu(False)
    with pytest.raises(OptionError, match="needs a CPU with native bf16"):
        resolve_backend("torch-bf16", CPU, None, tiny_model)


def test_torch_bf16_runs_convolutions_in_bf16_and_the_rest_in_fp32(tiny_checkpoint, bf16_cpu):
    """Parity with the model's parts run by hand: bf16 maps in, fp32 fusion and head."""
    bf16_cpu(True)  # runs (emulated where not native) on any CPU
    model = load_checkpoint(tiny_checkpoint)
    # The same memory format as the network run by hand: the same bf16 kernels.
    runner = prepare_runner(model, CPU, None, backend="torch-bf16", channels_last=False)
    fp32 = prepare_model(model.model, CPU, None, channels_last=False)
    net = model.model.eval()
    x = torch.randn(6, 3, 64, 64)
    with torch.inference_mode():
        got = runner(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            query, lows = net.conv_maps(x)
        assert query.dtype == torch.bfloat16  # the convolutions did run in bf16
        logits = net.classify(net.fuse(query.float(), tuple(low.float() for low in lows)))
        ref = fp32(x)
    torch.testing.assert_close(got, torch.softmax(logits, 1), atol=1e-5, rtol=1e-4)
    assert got.dtype == torch.float32 and got.shape == (6, 3)
    assert (got - ref).abs().max() < 0.05  # near fp32, not equal to it
    assert (got - ref).abs().max() > 0


def test_torch_bf16_probabilities_stay_near_fp32_on_real_imagery(bf16_cpu):
    """The backend's bar, on the bundled model and the sample aerial's 16 tiles:
    the same class, probabilities within 0.01."""
    import rasterio
    from rasterio.windows import Window

    bf16_cpu(True)
    model = load_checkpoint()
    size = model.meta.tile_size
    with rasterio.open(ROOT / "sample_data" / "aerial_rgb_025m.tif") as src:
        starts = np.linspace(0, src.width - size, 4).astype(int)
        pixels = [src.read(window=Window(c, r, size, size)) for r in starts for c in starts]
    x = Normaliser(model.meta, CPU)(pixels, None)
    runner = prepare_runner(model, CPU, None, backend="torch-bf16")
    fp32 = prepare_runner(model, CPU, None, backend="torch")
    with torch.inference_mode():
        got, ref = runner(x), fp32(x)
    assert torch.equal(got.argmax(1), ref.argmax(1))
    assert 0 < (got - ref).abs().max() < 0.01
