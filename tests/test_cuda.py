"""Classify and train on a real CUDA GPU (marked ``cuda``: skipped without one).

The same code paths run on the CPU in ``test_device_paths.py`` (CUDA mocked,
bf16 autocast on CPU); here they meet the real device: the pinned staging,
the results collected one batch late, cuDNN, bf16 autocast, the GradScaler.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mscn_geo.models import load_checkpoint
from tests.conftest import classify_and_read, colour_chips

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def test_cuda_classify_matches_cpu(make_scene, tiny_model, tmp_path, monkeypatch):
    # cuDNN's TF32 convolutions moved probabilities by up to 0.018 on an H200:
    # off here, so that fp32 on the GPU must match the CPU closely.
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    scene = make_scene(640, 448, nodata_cols=70)
    cpu, frame_cpu, raster_cpu, _ = classify_and_read(scene, tiny_model, tmp_path / "cpu")
    gpu, frame_gpu, raster_gpu, profile = classify_and_read(
        scene, tiny_model, tmp_path / "gpu", device="cuda", amp=False
    )
    assert gpu.device.startswith("cuda") and gpu.amp == "off"
    assert gpu.classified == cpu.classified
    names = [f"p_{c}" for c in tiny_model.meta.class_names]
    p_cpu, p_gpu = frame_cpu[names].to_numpy(), frame_gpu[names].to_numpy()
    assert np.abs(p_gpu - p_cpu).max() < 1e-3
    top2 = np.sort(p_cpu, axis=1)[:, -2:]
    sure = top2[:, 1] - top2[:, 0] > 0.02
    np.testing.assert_array_equal(frame_gpu["class_id"][sure], frame_cpu["class_id"][sure])
    assert profile["crs"].to_epsg() == 32633
    assert (raster_gpu == raster_cpu).mean() > 0.99

    bf16, frame_bf16, _, _ = classify_and_read(
        scene, tiny_model, tmp_path / "bf16", device="cuda", amp=True
    )
    assert bf16.amp == "bf16" and bf16.classified == cpu.classified
    np.testing.assert_allclose(frame_bf16[names].to_numpy().sum(axis=1), 1.0, atol=1e-3)
    # The tiny random model is sensitive to bf16 rounding: 0.19 on the CPU's bf16.
    assert np.abs(frame_bf16[names].to_numpy() - p_cpu).max() < 0.3


def test_cuda_training_with_amp_writes_a_cpu_loadable_checkpoint(tmp_path):
    from mscn_geo.training import TrainConfig, train

    data = colour_chips(tmp_path / "chips", per_class=8)
    cfg = TrainConfig(
        arch="resnet18", input_size=32, epochs=3, batch_size=6, lr=3e-3, warmup_epochs=1,
        randaugment_magnitude=0, val_fraction=0.25, last_every_min=0.0, device="cuda", amp=True,
    )  # fmt: skip
    out = tmp_path / "model.pt"
    summary = train(out, cfg, data_dir=data)
    assert summary["device"].startswith("cuda")
    losses = [json.loads(line)["train_loss"] for line in (tmp_path / "model_log.jsonl").open()]
    assert len(losses) == 3 and all(np.isfinite(losses))
    model = load_checkpoint(out)  # saved from the GPU, read on the CPU
    assert next(model.model.parameters()).device.type == "cpu"
    assert model.meta.class_names == ["blue", "green", "red"]
