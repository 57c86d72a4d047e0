"""Training (tiny runs on generated chips), evaluation metrics, augmentation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from mscn_geo.augment import BatchAugment
from mscn_geo.data import load_image_folder, stratified_split
from mscn_geo.errors import DatasetError
from mscn_geo.evaluate import classification_metrics, evaluate_folder
from mscn_geo.models import ModelMeta, load_checkpoint, register_model, save_checkpoint
from mscn_geo.train import TrainConfig, load_backbone_weights, train

COLOURS = {"blue": 2, "green": 1, "red": 0}


def _chips(root: Path, per_class: int = 6, size: int = 40, seed: int = 0) -> Path:
    """Three classes of noisy single-colour chips, saved as PNG and WebP."""
    rng = np.random.default_rng(seed)
    for name, band in COLOURS.items():
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            arr = rng.integers(0, 70, (size, size, 3), dtype=np.uint8)
            arr[..., band] += 150
            Image.fromarray(arr).save(root / name / f"{i}.{'png' if i % 2 else 'webp'}")
    return root


def _tiny_config(**kw) -> TrainConfig:
    base = dict(
        arch="resnet18",
        input_size=32,
        epochs=4,
        batch_size=6,
        lr=3e-3,
        warmup_epochs=1,
        randaugment_magnitude=5,
        val_fraction=0.34,
        ema_decay=0.0,
    )
    return TrainConfig(**{**base, **kw})


def test_stratified_split_is_per_class_and_reproducible():
    labels = [0] * 10 + [1] * 5
    tr, va = stratified_split(labels, 0.2, seed=3)
    assert sorted(tr + va) == list(range(15))
    assert sum(labels[i] == 0 for i in va) == 2 and sum(labels[i] == 1 for i in va) == 1
    assert stratified_split(labels, 0.2, seed=3) == (tr, va)


def test_tiny_training_lowers_the_loss_and_round_trips(tmp_path):
    data = _chips(tmp_path / "data")
    out = tmp_path / "run" / "model.pt"
    summary = train(out, _tiny_config(arch="mscn_resnet18", arch_kwargs={"dim": 32}), data_dir=data)
    log = [
        json.loads(line) for line in (tmp_path / "run" / "model_log.jsonl").read_text().splitlines()
    ]
    assert len(log) == 4
    assert log[-1]["train_loss"] < log[0]["train_loss"]
    assert (tmp_path / "run" / "model_curve.png").stat().st_size > 1000
    assert (tmp_path / "run" / "model_config.yaml").exists()
    loaded = load_checkpoint(out)
    meta = loaded.meta
    assert meta.class_names == ["blue", "green", "red"]
    assert meta.trained and meta.tile_size == 32 and len(meta.mean) == 3
    assert meta.metrics["val_overall_accuracy"] == pytest.approx(
        summary["best_val_overall_accuracy"]
    )
    # Predictions identical after a second reload (fp16 weights are stored, fp32 used).
    x = torch.randn(3, 3, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(loaded.model(x), load_checkpoint(out).model(x))


def test_resume_continues_exactly(tmp_path):
    data = _chips(tmp_path / "data")
    full = train(tmp_path / "a" / "m.pt", _tiny_config(epochs=3), data_dir=data)
    # Same run stopped after 2 epochs (the schedule still plans 3), then resumed.
    cfg = _tiny_config(epochs=3)
    stop = tmp_path / "b" / "m.pt"

    class Stop(Exception):
        pass

    def stop_after_two(entry):
        if entry.epoch == 2:
            raise Stop

    with pytest.raises(Stop):
        train(stop, cfg, data_dir=data, on_epoch=stop_after_two)
    resumed = train(stop, cfg, data_dir=data, resume=tmp_path / "b" / "m_last.pt")
    assert resumed["epochs"] == full["epochs"] == 3
    a = [json.loads(x) for x in (tmp_path / "a" / "m_log.jsonl").read_text().splitlines()]
    b = [json.loads(x) for x in (tmp_path / "b" / "m_log.jsonl").read_text().splitlines()]
    assert [e["train_loss"] for e in a] == pytest.approx([e["train_loss"] for e in b], abs=1e-6)
    wa = load_checkpoint(tmp_path / "a" / "m_last.pt").model.state_dict()
    wb = load_checkpoint(tmp_path / "b" / "m_last.pt").model.state_dict()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=1e-6, rtol=1e-5)


def test_config_file_and_unknown_keys(tmp_path):
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text("epochs: 7\nlr: 0.01\n")
    cfg = TrainConfig.from_file(cfg_file, lr=0.5)
    assert cfg.epochs == 7 and cfg.lr == 0.5
    cfg_file.write_text("epochz: 7\n")
    with pytest.raises(Exception, match="epochz"):
        TrainConfig.from_file(cfg_file)


def test_init_backbone_loads_torchvision_weights_we_saved(tmp_path):
    import torchvision

    from mscn_geo.models import create_model

    src = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save(src.state_dict(), path)
    net = create_model("mscn_resnet18", num_classes=4, in_chans=4)
    missing = load_backbone_weights(net, path)
    assert missing == []
    torch.testing.assert_close(net.backbone.layer3[0].conv1.weight, src.layer3[0].conv1.weight)
    # 4 bands: conv1 adapted by averaging the RGB filters.
    torch.testing.assert_close(net.backbone.conv1.weight[:, 0], src.conv1.weight.mean(1))


def test_metrics_of_a_known_confusion_matrix():
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 2, 2])
    preds = torch.tensor([0, 0, 0, 1, 1, 1, 1, 1, 2, 0])
    m = classification_metrics(preds, labels, ["a", "b", "c"])
    assert m["confusion_matrix"] == [[3, 1, 0], [0, 4, 0], [1, 0, 1]]
    assert m["overall_accuracy"] == pytest.approx(0.8)
    assert m["mean_per_class_accuracy"] == pytest.approx((0.75 + 1 + 0.5) / 3)
    pe = (4 * 4 + 4 * 5 + 2 * 1) / 100  # chance agreement from the marginals
    assert m["kappa"] == pytest.approx((0.8 - pe) / (1 - pe), abs=1e-6)
    assert m["per_class"]["b"]["precision"] == pytest.approx(0.8)
    assert m["per_class"]["c"]["recall"] == pytest.approx(0.5)


class _ColourModel(nn.Module):
    """Predicts the brightest band: logits are the per-band means (test double)."""

    def __init__(self, num_classes: int, in_chans: int = 3) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return x.mean((2, 3)) * 10 + self.dummy


@register_model
def colour_test_model(num_classes: int, in_chans: int = 3, **kw) -> nn.Module:
    return _ColourModel(num_classes, in_chans)


def test_evaluate_folder_gives_the_known_confusion_matrix(tmp_path):
    data = _chips(tmp_path / "data", per_class=4)
    # Two green chips filed under 'red': they must show up as red -> green errors.
    for i in range(2):
        (data / "green" / f"{i}.{'png' if i % 2 else 'webp'}").rename(
            data / "red" / f"moved{i}.png"
        )
    meta = ModelMeta(
        class_names=["red", "green", "blue"],
        mean=[0, 0, 0],
        std=[1, 1, 1],
        tile_size=40,
        trained=True,
    )
    ckpt = save_checkpoint(tmp_path / "c.pt", _ColourModel(3), "colour_test_model", meta)
    result = evaluate_folder(data, ckpt, tmp_path / "ev", device="cpu")
    assert result["classes"] == ["red", "green", "blue"]
    assert result["confusion_matrix"] == [[4, 2, 0], [0, 2, 0], [0, 0, 4]]
    assert result["n_images"] == 12
    assert (tmp_path / "ev" / "confusion_matrix.csv").read_text().splitlines()[1] == "red,4,2,0"
    assert (tmp_path / "ev" / "confusion_matrix.png").stat().st_size > 1000


def test_evaluate_refuses_unknown_class_folders(tmp_path):
    data = _chips(tmp_path / "data", per_class=2)
    (data / "water").mkdir()
    Image.new("RGB", (40, 40)).save(data / "water" / "0.png")
    meta = ModelMeta(class_names=["red", "green", "blue"], tile_size=40, trained=True)
    ckpt = save_checkpoint(tmp_path / "c.pt", _ColourModel(3), "colour_test_model", meta)
    with pytest.raises(DatasetError, match="water"):
        evaluate_folder(data, ckpt, device="cpu")


def test_image_folder_reads_png_webp_and_multiband_tif(tmp_path):
    import rasterio

    data = _chips(tmp_path / "data", per_class=2)
    ds = load_image_folder(data, 32)
    assert ds.images.shape == (6, 3, 32, 32) and ds.images.dtype == torch.uint8
    tif_root = tmp_path / "tif"
    for c in ("a", "b"):
        (tif_root / c).mkdir(parents=True)
        with rasterio.open(
            tif_root / c / "x.tif",
            "w",
            driver="GTiff",
            width=20,
            height=20,
            count=4,
            dtype="uint16",
        ) as dst:
            dst.write(np.full((4, 20, 20), 1000, np.uint16) + np.arange(20, dtype=np.uint16))
    ds4 = load_image_folder(tif_root, 16)
    assert ds4.bands == 4 and ds4.images.shape == (2, 4, 16, 16)


def test_batch_augment_without_randomness_is_a_dihedral_view():
    torch.manual_seed(0)
    aug = BatchAugment(
        16, [0.0] * 3, [1.0] * 3, scale=(1, 1), ratio=(1, 1), magnitude=0, erasing=0.0
    )
    x = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8)
    out = aug(x)
    ref = x.float() / 255
    for i in range(8):
        views = [torch.rot90(ref[i], k, (-2, -1)) for k in range(4)]
        views += [v.flip(-1) for v in views]
        assert min((out[i] - v).abs().max().item() for v in views) < 1e-4


def test_batch_augment_full_recipe_is_finite_and_varies_per_sample():
    torch.manual_seed(0)
    aug = BatchAugment(24, [0.5] * 3, [0.25] * 3, magnitude=9, erasing=0.5)
    x = torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8).expand(16, -1, -1, -1)
    out = aug(x.contiguous())
    assert out.shape == (16, 3, 24, 24) and torch.isfinite(out).all()
    assert len({round(v, 4) for v in out.mean((1, 2, 3)).tolist()}) > 8
