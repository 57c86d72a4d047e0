"""Training (tiny runs on generated chips), evaluation metrics, augmentation."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from mscn_geo.augment import BatchAugment
from mscn_geo.data import load_image_folder, stratified_split
from mscn_geo.errors import DatasetError, OptionError
from mscn_geo.evaluate import classification_metrics, evaluate_folder
from mscn_geo.models import ModelMeta, load_checkpoint, register_model, save_checkpoint
from mscn_geo.training import TrainConfig, load_backbone_weights, make_config, train
from tests.conftest import COLOUR_BANDS, colour_chips

COLOURS = COLOUR_BANDS


def _chips(root: Path, per_class: int = 6, size: int = 40, seed: int = 0) -> Path:
    """Three classes of noisy single-colour chips, saved as WebP and PNG."""
    return colour_chips(root, per_class, size, seed, formats=("webp", "png"))


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
        last_every_min=0.0,
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
    cfg = make_config({"lr": 0.5}, cfg_file)
    assert cfg.epochs == 7 and cfg.lr == 0.5
    cfg_file.write_text("epochz: 7\n")
    with pytest.raises(OptionError, match="epochz"):
        make_config(file=cfg_file)


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


# --- options checked before any work (issue 11) ----------------------------------------


def test_config_values_are_coerced_and_checked_before_any_data_is_read(tmp_path):
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text("lr: 1e-3\nepochs: '4'\namp: false\n")  # YAML reads 1e-3 as a string
    cfg = make_config(file=cfg_file)
    assert cfg.lr == 1e-3 and isinstance(cfg.lr, float) and cfg.epochs == 4 and cfg.amp is False
    for values, text in [
        ({"lr": "fast"}, "lr must be a number"),
        ({"epochs": 0}, "epochs must be at least 1, got 0"),
        ({"epochs": 2.5}, "epochs must be a whole number"),
        ({"val_fraction": 1.0}, "val_fraction must be above 0 and below 1"),
        ({"arch": "nope"}, "unknown architecture arch='nope'; known: .*mscn_resnet18"),
        ({"init": str(tmp_path / "missing.pt")}, "file not found"),
    ]:
        with pytest.raises(OptionError, match=text):
            make_config(values)
    # An unknown architecture fails before the (missing) data folder is looked at.
    with pytest.raises(OptionError, match="unknown architecture"):
        train(tmp_path / "m.pt", TrainConfig(arch="nope"), data_dir=tmp_path / "no-such-dir")


def test_fine_tune_defaults_apply_only_to_options_not_given():
    from mscn_geo.training import FINE_TUNE_DEFAULTS

    cfg = make_config({"init": "bundled", "epochs": 3})
    assert cfg.epochs == 3
    assert cfg.freeze_epochs == FINE_TUNE_DEFAULTS["freeze_epochs"] > 0
    assert cfg.backbone_lr_scale == FINE_TUNE_DEFAULTS["backbone_lr_scale"] < 1
    assert make_config({}).freeze_epochs == 0


def test_train_refuses_to_replace_an_earlier_run(tmp_path):
    from mscn_geo.errors import OutputError

    out = tmp_path / "m.pt"
    out.write_bytes(b"an earlier model")
    with pytest.raises(OutputError, match=r"m\.pt exists"):
        train(out, _tiny_config(), data_dir=tmp_path / "no-such-dir")
    assert out.read_bytes() == b"an earlier model"
    # With overwrite the run goes on (and fails on the missing data, not on the file).
    with pytest.raises(DatasetError, match="not found"):
        train(out, _tiny_config(), data_dir=tmp_path / "no-such-dir", overwrite=True)


def test_resume_keeps_the_callers_runtime_options_and_refuses_other_changes():
    from mscn_geo.training import config_for_resume

    stored = dataclasses.asdict(_tiny_config(epochs=3, device="auto"))
    cfg = config_for_resume(stored, {"epochs": 5, "device": "cpu", "time_budget_min": 2.0})
    assert (cfg.epochs, cfg.device, cfg.time_budget_min) == (5, "cpu", 2.0)
    assert cfg.lr == stored["lr"] and cfg.arch == stored["arch"]
    assert config_for_resume(stored, dict(stored)) == TrainConfig(**stored)
    with pytest.raises(OptionError, match=r"lr \(0.003 -> 0.1\)"):
        config_for_resume(stored, {"lr": 0.1, "epochs": 5})


# --- the run: time budget, last checkpoint, epochs (issue 14) --------------------------


def test_last_checkpoint_is_written_at_the_end_once_with_one_copy_of_the_weights(tmp_path):
    data = _chips(tmp_path / "data", per_class=3)
    exists = []
    train(
        tmp_path / "m.pt",
        _tiny_config(arch="resnet18", epochs=2, last_every_min=60.0),
        data_dir=data,
        on_epoch=lambda e: exists.append((tmp_path / "m_last.pt").exists()),
    )
    assert exists == [False, True]  # not rewritten every epoch
    state = torch.load(tmp_path / "m_last.pt", weights_only=True)
    assert "model" not in state["train_state"] and state["train_state"]["epoch"] == 2
    assert state["state_dict"]["head.weight"].dtype == torch.float32


# --- chips that are awkward (issue 14) ---------------------------------------------------


def _geotiff(path: Path, data: np.ndarray, res: float = 5.0, crs: str = "EPSG:32633") -> None:
    import rasterio
    from rasterio.transform import from_origin

    path.parent.mkdir(parents=True, exist_ok=True)
    profile = dict(driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0])
    profile.update(crs=crs, transform=from_origin(500000, 4000000, res, res))
    with rasterio.open(path, "w", dtype=data.dtype, **profile) as dst:
        dst.write(data)


def test_time_budget_and_one_image_classes(tmp_path):
    data = _chips(tmp_path / "data", per_class=3)
    for f in sorted((data / "red").iterdir())[1:]:
        f.unlink()
    warnings, seen = [], []
    summary = train(
        tmp_path / "a.pt",
        _tiny_config(arch="resnet18", epochs=50, time_budget_min=1e-4),
        data_dir=data,
        on_warning=warnings.append,
        on_epoch=seen.append,
    )
    # The budget is spent after one epoch: the run stops, the summary counts what the log has.
    log = (tmp_path / "a_log.jsonl").read_text().splitlines()
    assert summary["epochs"] == len(log) == len(seen) == 1
    # A class of one image: trained on, not validated, and said so.
    assert any("no validation image for class(es) red" in w for w in warnings)
    assert summary["warnings"] == warnings
    for c in ("green", "blue"):
        for f in sorted((data / c).iterdir())[1:]:
            f.unlink()
    with pytest.raises(DatasetError, match="no image left for validation"):
        train(tmp_path / "b.pt", _tiny_config(arch="resnet18", epochs=1), data_dir=data)


def test_chips_of_mixed_band_counts_are_refused_with_the_counts(tmp_path):
    data = _chips(tmp_path / "data", per_class=2)
    _geotiff(data / "red" / "four.tif", np.zeros((4, 40, 40), np.uint8))
    with pytest.raises(DatasetError, match=r"6 chip\(s\) with 3 band\(s\).*1 chip\(s\) with 4"):
        load_image_folder(data, 32)


def test_georeferenced_chips_give_the_pixel_size_and_uint16_one_shared_stretch(tmp_path):
    rng = np.random.default_rng(0)
    dark = rng.integers(100, 200, (3, 40, 40)).astype(np.uint16)
    bright = rng.integers(3000, 4000, (3, 40, 40)).astype(np.uint16)
    _geotiff(tmp_path / "d" / "a" / "dark.tif", dark)
    _geotiff(tmp_path / "d" / "b" / "bright.tif", bright)
    ds = load_image_folder(tmp_path / "d", 20)
    assert ds.pixel_size_m == pytest.approx(10.0)  # 5 m chips of 40 px cached at 20 px
    assert ds.scaling.method == "training"
    # One stretch for all chips: the dark chip stays dark (a per-chip stretch would
    # spread each chip over 0..255 and make both look alike).
    assert ds.images[0].float().mean() < 20 and ds.images[1].float().mean() > 200
    np.testing.assert_allclose(
        ds.scaling.low, np.percentile(np.concatenate([dark, bright], 2), 2, axis=(1, 2)), rtol=0.05
    )


# --- evaluate uses the stored validation list (issue 11) ---------------------------------


def test_evaluate_val_split_scores_exactly_the_checkpoints_validation_chips(tmp_path):
    data = _chips(tmp_path / "data", per_class=4)
    listed = ["red/1.png", "green/2.webp", "blue/3.png"]
    meta = ModelMeta(
        class_names=["red", "green", "blue"],
        mean=[0, 0, 0],
        std=[1, 1, 1],
        tile_size=40,
        trained=True,
        val_files=listed,
    )
    ckpt = save_checkpoint(tmp_path / "c.pt", _ColourModel(3), "colour_test_model", meta)
    result = evaluate_folder(data, ckpt, split="val", device="cpu")
    assert result["n_images"] == 3 and result["split_source"].startswith("the validation chips")
    assert result["confusion_matrix"] == [[1, 0, 0], [0, 1, 0], [0, 0, 1]]
    assert evaluate_folder(data, ckpt, split="train", device="cpu")["n_images"] == 9
    (data / "red" / "1.png").unlink()
    with pytest.raises(DatasetError, match="1 of the model's 3 validation chips are not in"):
        evaluate_folder(data, ckpt, split="val", device="cpu")
    with pytest.raises(OptionError, match="val_fraction and seed"):
        evaluate_folder(data, ckpt, split="val", seed=1, device="cpu")


# --- fine-tuning (issue 10) --------------------------------------------------------------


def _manifest_chips(root: Path, classes=("forest", "lake"), per_class: int = 6) -> Path:
    """Georeferenced uint8 chips with a chips.json as `mscn-geo chips` writes it."""
    rng = np.random.default_rng(1)
    split = {"train": [], "val": []}
    for k, name in enumerate(classes):
        for i in range(per_class):
            arr = rng.integers(0, 60, (3, 32, 32)).astype(np.uint8)
            arr[k % 3] += 150
            rel = f"{name}/{name}_{i}.tif"
            _geotiff(root / rel, arr, res=2.0)
            split["val" if i < 2 else "train"].append(rel)
    manifest = {
        "bands": [3, 2, 1],
        "band_names": ["red", "green", "blue"],
        "scaling": {"method": "fixed", "low": [0.0] * 3, "high": [4095.0] * 3},
        "pixel_size_m": 2.0,
        "tile_size": 32,
        "split": split,
    }
    (root / "chips.json").write_text(json.dumps(manifest))
    return root


def test_fine_tune_from_the_bundled_model_keeps_its_body_and_same_named_head_rows():
    from mscn_geo.models import load_checkpoint as load
    from mscn_geo.training.model_setup import build_model

    bundled = load()
    built = build_model(make_config({"init": "bundled"}), ["forest", "my_orchards"], 3)
    assert built.arch == bundled.arch and built.copied_classes == ["forest"]
    new, old = built.model.state_dict(), bundled.model.state_dict()
    for key in ("backbone.conv1.weight", "msc.0.q.weight", "gce.spatial.weight"):
        if key in old:
            torch.testing.assert_close(new[key], old[key])
    j = bundled.meta.class_names.index("forest")
    torch.testing.assert_close(new["head.weight"][0], old["head.weight"][j])
    assert new["head.weight"].shape[0] == 2


def test_fine_tune_on_chips_records_the_users_classes_and_the_chips_reading(tmp_path):
    data = _manifest_chips(tmp_path / "chips")
    out = tmp_path / "ft.pt"
    cfg = make_config(
        {"init": "bundled", "epochs": 2, "freeze_epochs": 1, "batch_size": 4, "last_every_min": 0}
    )
    train(out, cfg, data_dir=data)
    loaded = load_checkpoint(out)
    meta = loaded.meta
    assert meta.class_names == ["forest", "lake"]
    assert meta.tile_size == 32 and meta.pixel_size_m == 2.0 and meta.scene_bands == [3, 2, 1]
    assert meta.scaling == {"method": "fixed", "low": [0.0] * 3, "high": [4095.0] * 3}
    assert sorted(meta.val_files) == sorted(
        f"{c}/{c}_{i}.tif" for c in ("forest", "lake") for i in range(2)
    )
    assert "fine-tuned from mscn_resnet18_ucmerced.pt" in meta.training_data
    # The backbone, frozen in epoch 1, was trained in epoch 2 (at a lower rate).
    last = load_checkpoint(tmp_path / "ft_last.pt").model.state_dict()["backbone.conv1.weight"]
    assert not torch.equal(last, load_checkpoint().model.state_dict()["backbone.conv1.weight"])
    # Reloaded, it predicts the same as the evaluation of the same file does.
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(loaded.model(x), load_checkpoint(out).model(x))
    result = evaluate_folder(data, out, split="val", device="cpu")
    assert result["n_images"] == 4 and result["classes"] == ["forest", "lake"]


def test_cli_options_come_from_the_config_and_user_errors_exit_2(tmp_path, capsys):
    from mscn_geo_cli.app import app
    from mscn_geo_cli.main import main
    from typer.testing import CliRunner

    help_text = " ".join(
        CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "250"}).output.split()
    )
    assert f"[default: {TrainConfig().epochs}; with --init: 6]" in help_text
    assert "--mixup" in help_text and "--pixel-size" in help_text
    data = _chips(tmp_path / "data", per_class=2)
    for args, text in [
        (["--epochs", "0"], "epochs must be at least 1, got 0"),
        (["--arch", "nope"], "unknown architecture"),
    ]:
        assert main(["train", str(data), "--out", str(tmp_path / "m.pt"), *args]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and text in err[0]
    assert not (tmp_path / "m.pt").exists()


def test_classify_reads_scenes_with_the_bands_and_scaling_the_model_was_trained_with(tmp_path):
    from mscn_geo.options import ClassifyOptions
    from mscn_geo.plan import plan_scene
    from mscn_geo.scaling import Scaling

    scene = tmp_path / "scene.tif"
    rng = np.random.default_rng(0)
    _geotiff(scene, rng.integers(0, 4000, (4, 64, 64)).astype(np.uint16))
    trained = Scaling("training", (10.0, 20.0, 30.0), (1000.0, 2000.0, 3000.0))
    meta = ModelMeta(
        class_names=["a", "b"], tile_size=32, scaling=trained.to_dict(), scene_bands=[4, 3, 2]
    )
    plan = plan_scene(scene, meta, ClassifyOptions())
    assert plan.info.scaling == trained and plan.info.band_indexes == [4, 3, 2]
    # What the user passes still wins.
    plan = plan_scene(scene, meta, ClassifyOptions(scale="0,4095", bands="1,2,3"))
    assert plan.info.scaling.low == (0.0,) * 3 and plan.info.band_indexes == [1, 2, 3]
    # A model trained on 8-bit chips leaves the scene's own default (a percentile stretch).
    plain = ModelMeta(class_names=["a", "b"], tile_size=32)
    assert plan_scene(scene, plain, ClassifyOptions()).info.scaling.method == "percentile"
