"""bf16 agreement per checkpoint: measured, recorded by train, and what ``auto`` makes of it."""

from __future__ import annotations

import shutil

import pytest
import torch

from mscn_geo import backends
from mscn_geo.backends import mixed_precision_checked, resolve_backend
from mscn_geo.evaluate import eval_transform, load_labelled_folder
from mscn_geo.mixed_agreement import (
    MAX_ABS_DP_BAR,
    MixedAgreement,
    measure_mixed_agreement,
    record_mixed_agreement,
    recorded_agreement,
)
from mscn_geo.models import LoadedModel, create_model, load_checkpoint, save_checkpoint
from mscn_geo.training import make_config, train
from tests.conftest import colour_chips

CPU = torch.device("cpu")


def _batches(n: int, size: int = 64, batch: int = 4, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, size, size, generator=gen)
    return [x[i : i + batch] for i in range(0, n, batch)]


def _by_hand(model: torch.nn.Module, x: torch.Tensor) -> tuple[float, float]:
    """(same-class share, max |dp|) of forward_mixed vs forward, computed directly."""
    net = model.eval().to(memory_format=torch.channels_last)
    x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        ref = torch.softmax(net(x), 1)
        got = torch.softmax(net.forward_mixed(x, torch.bfloat16).float(), 1)
    return float((got.argmax(1) == ref.argmax(1)).float().mean()), float((got - ref).abs().max())


def test_measure_compares_bf16_convolutions_with_float32(tiny_model):
    batches = _batches(10)
    got = measure_mixed_agreement(tiny_model.model, batches, CPU)
    same, max_dp = _by_hand(tiny_model.model, torch.cat(batches))
    assert got.images == 10 and got.dtype == "bfloat16" and got.device == "cpu"
    assert got.same_class == pytest.approx(same)
    assert got.max_abs_dp == pytest.approx(max_dp, abs=1e-6)
    assert got.max_abs_dp > 0  # the convolutions really ran in bf16


def test_measure_stops_at_the_limit_and_measures_nothing_without_images(tiny_model):
    batches = _batches(12)
    got = measure_mixed_agreement(tiny_model.model, iter(batches), CPU, limit=6)
    _same, max_dp = _by_hand(tiny_model.model, torch.cat(batches)[:6])
    assert got.images == 6 and got.max_abs_dp == pytest.approx(max_dp, abs=1e-6)
    none = measure_mixed_agreement(tiny_model.model, [], CPU)
    assert none.images == 0 and not none.passes


@pytest.mark.parametrize(
    ("same", "dp", "passes"),
    [
        (1.0, 0.0045, True),
        (0.995, MAX_ABS_DP_BAR, True),
        (0.994, 0.001, False),
        (1.0, 0.0101, False),
    ],
)
def test_the_bar(same, dp, passes):
    assert MixedAgreement(336, same, dp, "bfloat16", "cpu").passes is passes


def test_record_rewrites_only_the_metrics(tiny_checkpoint, tmp_path):
    path = tmp_path / "model.pt"
    shutil.copy(tiny_checkpoint, path)
    before = load_checkpoint(path)
    got = record_mixed_agreement(path, _batches(8), CPU)
    after = load_checkpoint(path)
    assert recorded_agreement(after.meta.metrics) == got
    assert after.meta.metrics["mixed_precision"]["passes"] == got.passes
    assert after.meta.class_names == before.meta.class_names
    weights = after.weights()
    assert all(torch.equal(weights[k], v) for k, v in before.weights().items())


def test_record_skips_a_model_without_mixed_precision(tiny_model, tmp_path):
    path = save_checkpoint(
        tmp_path / "plain.pt", create_model("resnet18", num_classes=3), "resnet18", tiny_model.meta
    )
    data = path.read_bytes()
    assert record_mixed_agreement(path, _batches(4), CPU) is None
    assert path.read_bytes() == data


def _with_record(model: LoadedModel, record: object) -> LoadedModel:
    meta = type(model.meta)(**{**vars(model.meta), "metrics": {"mixed_precision": record}})
    return LoadedModel(model.arch, model.arch_kwargs, meta, state=model.weights())


@pytest.fixture
def native(monkeypatch):
    monkeypatch.setattr(backends, "native_bf16", lambda *a, **k: True)


def test_auto_runs_bf16_only_for_a_model_recorded_within_the_bar(tiny_model, native):
    good = MixedAgreement(50, 1.0, 0.004, "bfloat16", "cpu").to_dict()
    bad_class = MixedAgreement(200, 0.99, 0.004, "bfloat16", "cpu").to_dict()
    bad_dp = MixedAgreement(200, 1.0, 0.03, "bfloat16", "cpu").to_dict()
    assert resolve_backend("auto", CPU, None, _with_record(tiny_model, good)) == "torch-bf16"
    for record in (bad_class, bad_dp, {"images": "x"}, "passes"):
        model = _with_record(tiny_model, record)
        assert not mixed_precision_checked(model)
        assert resolve_backend("auto", CPU, None, model) in ("onnxruntime", "torch")
    assert resolve_backend("auto", CPU, None, tiny_model) in ("onnxruntime", "torch")  # none
    # By name the user's choice stands, record or not.
    assert resolve_backend("torch-bf16", CPU, None, tiny_model) == "torch-bf16"


def test_the_bundled_model_carries_a_passing_record(native):
    model = load_checkpoint()
    record = recorded_agreement(model.meta.metrics)
    assert record is not None and record.passes
    assert record.images == 336 and record.same_class == 1.0 and record.max_abs_dp < 0.006
    assert resolve_backend("auto", CPU, None, model) == "torch-bf16"


@pytest.mark.parametrize("is_native", [True, False])
def test_train_records_the_agreement_where_bf16_is_native(tmp_path, monkeypatch, is_native):
    from mscn_geo.training import run

    monkeypatch.setattr(run, "native_bf16", lambda: is_native)
    data = colour_chips(tmp_path / "data", 6, 40, 0, formats=("png",))
    out = tmp_path / "model.pt"
    cfg = make_config(
        dict(arch="mscn_resnet18", arch_kwargs={"dim": 32}, input_size=32, epochs=1, batch_size=6)
    )
    summary = train(out, cfg, data)
    record = recorded_agreement(load_checkpoint(out).meta.metrics)
    if not is_native:
        assert summary["mixed_precision"] is None and record is None
        return
    assert summary["mixed_precision"] == record.to_dict()
    assert record.images == summary["val_chips"] > 0
    # The recorded figures are those of the saved weights on the validation chips.
    loaded = load_checkpoint(out)
    meta = loaded.meta
    val = load_labelled_folder(
        data, meta.class_names, meta.tile_size, 3, "val", val_files=meta.val_files
    )
    val.transform = eval_transform(meta.mean, meta.std)
    again = measure_mixed_agreement(loaded.model, [torch.stack([x for x, _ in val])], CPU)
    assert again.images == record.images and again.same_class == record.same_class
    assert again.max_abs_dp == pytest.approx(record.max_abs_dp, abs=1e-6)


def test_train_command_reports_the_recorded_agreement(tmp_path, monkeypatch, capsys):
    from mscn_geo_cli.main import main

    from mscn_geo.training import run

    monkeypatch.setattr(run, "native_bf16", lambda: True)
    data = colour_chips(tmp_path / "data", 4, 32, 0, formats=("png",))
    out = tmp_path / "m.pt"
    args = ["--arch", "mscn_resnet18", "--input-size", "32", "--epochs", "1", "--batch-size", "4"]
    assert main(["train", str(data), "--out", str(out), "--quiet", *args]) == 0
    record = recorded_agreement(load_checkpoint(out).meta.metrics)
    line = next(s for s in capsys.readouterr().out.splitlines() if "bf16 agreement" in s)
    assert f"same class {100 * record.same_class:.1f} %" in line
    assert f"max |dp| {record.max_abs_dp:.4f} on {record.images} images" in line
