"""Inference backends: choice, ONNX Runtime parity with PyTorch, the export cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mscn_geo import backends
from mscn_geo.backends import prepare_runner, resolve_backend
from mscn_geo.errors import OptionError
from mscn_geo.models import load_checkpoint
from mscn_geo.pipeline import Normaliser, prepare_model
from tests.conftest import ROOT

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
    plain = torch.nn.Linear(3, 3)  # no forward_mixed
    assert resolve_backend("auto", CPU, None, tiny_model.model) == (
        "torch-bf16" if native else "onnxruntime"
    )
    assert resolve_backend("auto", CPU, None, plain) == "onnxruntime"
    assert resolve_backend("auto", CPU, None) == "onnxruntime"
    assert resolve_backend("auto", CPU, torch.bfloat16, tiny_model.model) == "torch"
    assert (
        resolve_backend("auto", torch.device("cuda"), torch.bfloat16, tiny_model.model) == "torch"
    )
    assert resolve_backend("auto", torch.device("cuda"), None, tiny_model.model) == "torch"
    assert resolve_backend(" Torch ", CPU, None, tiny_model.model) == "torch"


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


def test_torch_bf16_needs_a_mixed_model_and_native_bf16(bf16_cpu, tiny_model):
    bf16_cpu(True)
    with pytest.raises(OptionError, match=r"needs a model with mixed precision.*Linear"):
        resolve_backend("torch-bf16", CPU, None, torch.nn.Linear(3, 3))
    assert resolve_backend("torch-bf16", CPU, None, tiny_model.model) == "torch-bf16"
    bf16_cpu(False)
    with pytest.raises(OptionError, match="needs a CPU with native bf16"):
        resolve_backend("torch-bf16", CPU, None, tiny_model.model)


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
