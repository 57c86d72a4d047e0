"""Registry, MSCN/GCE shapes, parameter count, checkpoint round trip."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mscn_geo.errors import CheckpointError
from mscn_geo.models import (
    BUNDLED_MODEL,
    GCE,
    ModelMeta,
    create_model,
    list_models,
    load_checkpoint,
    save_checkpoint,
)

SHARED = Path(__file__).resolve().parents[2].parent / "shared"


@pytest.mark.parametrize("name", list_models())
def test_every_registered_architecture_classifies(name):
    net = create_model(name, num_classes=5, in_chans=4).eval()
    with torch.inference_mode():
        logits = net(torch.randn(2, 4, 64, 96))
    assert logits.shape == (2, 5)
    assert torch.isfinite(logits).all()


def test_registry_lists_and_rejects_unknown_names():
    assert {"mscn_resnet18", "mscn_resnet34", "mscn_resnet50", "resnet18"} <= set(list_models())
    with pytest.raises(KeyError, match="mscn_resnet18"):
        create_model("nope", num_classes=2)


def test_mscn_resnet50_size_matches_the_paper():
    net = create_model("mscn_resnet50", num_classes=21)
    n = sum(p.numel() for p in net.parameters())
    assert abs(n - 36.3e6) / 36.3e6 < 0.02


def test_mscn_resnet34_with_45_classes_matches_the_paper():
    net = create_model("mscn_resnet34", num_classes=45)
    n = sum(p.numel() for p in net.parameters())
    assert abs(n - 22.1e6) / 22.1e6 < 0.02


def test_gce_scales_each_group_by_one_plus_its_spatial_mask():
    torch.manual_seed(0)
    g = GCE(64, groups=8).eval()
    x = torch.randn(2, 64, 5, 7)
    with torch.inference_mode():
        out = g(x)
        attended = x * torch.sigmoid(g.channel_mlp(x.mean((2, 3), keepdim=True)))
        s = torch.sigmoid(g.spatial(attended))  # (2, 8, 5, 7), one map per group
    assert out.shape == x.shape
    ratio = (out / attended).reshape(2, 8, 8, 5, 7)
    # One factor per group and pixel, shared by the group's 8 channels ...
    torch.testing.assert_close(ratio, ratio[:, :, :1].expand_as(ratio))
    factor = ratio[:, :, 0]
    # ... equal to 2 where the map is above its per-sample mean, else 1 + s (in (1, 2)).
    above = s > s.mean((2, 3), keepdim=True)
    assert above.any() and (~above).any()
    torch.testing.assert_close(factor[above], torch.full_like(factor[above], 2.0))
    torch.testing.assert_close(factor[~above], 1 + s[~above])
    assert (factor > 1).all() and (factor <= 2 + 1e-6).all()


def test_checkpoint_round_trip_keeps_metadata_and_predictions(tmp_path):
    torch.manual_seed(0)
    net = create_model("mscn_resnet18", num_classes=3, dim=32).eval()
    meta = ModelMeta(class_names=["a", "b", "c"], tile_size=64, pixel_size_m=0.5, trained=True)
    path = save_checkpoint(tmp_path / "m.pt", net, "mscn_resnet18", meta, arch_kwargs={"dim": 32})
    loaded = load_checkpoint(path)
    assert loaded.meta.class_names == ["a", "b", "c"]
    assert loaded.meta.pixel_size_m == 0.5
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        torch.testing.assert_close(loaded.model(x), net(x))
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]  # no temporary left


def test_foreign_and_corrupt_checkpoints_are_refused(tmp_path):
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(CheckpointError, match="not an mscn-geo checkpoint"):
        load_checkpoint(foreign)
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"PK\x03\x04 garbage")
    with pytest.raises(CheckpointError, match="is corrupt or truncated"):
        load_checkpoint(corrupt)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_bundled_model_is_small_and_loads_offline():
    assert BUNDLED_MODEL.stat().st_size < 25e6
    loaded = load_checkpoint()
    assert loaded.arch == "mscn_resnet18"
    assert len(loaded.meta.class_names) == 21
    assert loaded.meta.bands == ["red", "green", "blue"]
    # What it can do is measured on real images below, not read from its own metadata.


def test_bundled_model_recognises_real_uc_merced_images():
    pool = SHARED / "data" / "ucmerced"
    if not pool.is_dir():
        pytest.skip(f"shared data absent: {pool}")
    from mscn_geo.evaluate import evaluate_folder

    # 3 images per class (chance is 1/21). The split shuffles each class with
    # the same seed, so these are the first 3 of the 16 validation images the
    # model never trained on (the checkpoint predates stored validation lists).
    result = evaluate_folder(pool, split="val", val_fraction=0.04, seed=0, device="cpu")
    assert result["n_images"] == 63
    assert result["split_source"].startswith("stratified split rebuilt")
    assert result["overall_accuracy"] > 0.8
    assert result["mean_per_class_accuracy"] > 0.8
