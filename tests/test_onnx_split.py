"""Splitting a graph at its top-k selections: same outputs as the whole graph, cached parts."""

from __future__ import annotations

import numpy as np
import pytest

from mscn_geo import onnx_split
from mscn_geo.backends import export_graph
from mscn_geo.onnx_split import SelectionSplitSession, cached_split, split_at_selections

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
from onnx import TensorProto, helper  # noqa: E402

CPU = ["CPUExecutionProvider"]


def _options(threads: int = 2):
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return options


def _whole_and_split(path, threads: int = 2):
    split = split_at_selections(onnx.load(str(path)))
    assert split is not None
    whole = ort.InferenceSession(str(path), _options(threads), providers=CPU)
    return whole, SelectionSplitSession(split, _options(threads), CPU, threads), split


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_split_graph_gives_the_whole_graphs_probabilities(tiny_model, threads):
    whole, parts, split = _whole_and_split(export_graph(tiny_model, 64), threads)
    # Three MSC modules, each with its two thresholds and its row maximum.
    assert len(split.selections) == 3
    assert all(len(sel.kth) == 2 and len(sel.maxima) == 1 for sel in split.selections)
    rng = np.random.default_rng(0)
    batches = [
        rng.integers(0, 256, (5, 3, 64, 64)).astype(np.float32),
        # flat tiles: pooled keys are equal away from the borders, scores tie
        np.full((3, 3, 64, 64), 128, np.float32),
        rng.integers(0, 256, (1, 3, 64, 64)).astype(np.float32),  # fewer rows than threads
    ]
    for x in batches:
        want = whole.run(None, {"pixels": x})[0]
        got = parts.run(None, {"pixels": x})[0]
        assert got.shape == want.shape == (len(x), 3)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
        np.testing.assert_array_equal(got.argmax(1), want.argmax(1))


def test_order_statistics_are_the_sorted_rows_values():
    rng = np.random.default_rng(1)
    rows = rng.integers(0, 6, (40, 30)).astype(np.float32)  # many ties
    ks = [5, 30, 1, 12]  # any order, the whole row and a single value included
    found, maxima = onnx_split._order_statistics(rows, ks)
    ordered = -np.sort(-rows, axis=1)
    for k, values in zip(ks, found, strict=True):
        np.testing.assert_array_equal(values, ordered[:, k - 1])
    np.testing.assert_array_equal(maxima, rows.max(1))


def _topk_model(use_indices: bool = False, reduce_axis: int = -1):
    """x (2, 8) -> TopK(k=3) -> ReduceMin, optionally also returning the indices."""
    k = helper.make_tensor("k", TensorProto.INT64, [1], [3])
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [reduce_axis])
    nodes = [
        helper.make_node("Relu", ["x"], ["s"]),
        helper.make_node("TopK", ["s", "k"], ["v", "i"], axis=-1, sorted=0),
        helper.make_node("ReduceMin", ["v", "axes"], ["t"], keepdims=1),
        helper.make_node("Add", ["s", "t"], ["y"]),
    ]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 8])]
    if use_indices:
        outputs.append(helper.make_tensor_value_info("i", TensorProto.INT64, [2, 3]))
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])]
    graph = helper.make_graph(nodes, "g", inputs, outputs, [k, axes])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_a_small_graph_splits_and_agrees():
    model = _topk_model()
    split = split_at_selections(model)
    assert split is not None and split.carried == ("s",)
    x = np.random.default_rng(2).normal(size=(2, 8)).astype(np.float32)
    got = SelectionSplitSession(split, _options(), CPU, 2).run(None, {"x": x})[0]
    s = np.maximum(x, 0)
    np.testing.assert_array_equal(got, s + -np.sort(-s, axis=1)[:, 2:3])


@pytest.mark.parametrize(
    "model",
    [_topk_model(use_indices=True), _topk_model(reduce_axis=0)],
    ids=["indices used", "reduced over another axis"],
)
def test_graphs_using_topk_otherwise_are_not_split(model):
    assert split_at_selections(model) is None


def test_split_is_cached_beside_the_graph(tiny_model, monkeypatch):
    path = export_graph(tiny_model, 64)
    first = cached_split(path)
    folder = path.with_name(f"{path.stem}.split-{onnx_split.SPLIT_REVISION}")
    assert sorted(p.name for p in folder.iterdir()) == ["first.onnx", "second.onnx", "split.json"]

    def no_split(*args, **kwargs):
        raise AssertionError("split again although the cache has the parts")

    monkeypatch.setattr(onnx_split, "split_at_selections", no_split)
    again = cached_split(path)
    assert again == first
    monkeypatch.undo()
    (folder / "second.onnx").unlink()  # damaged by hand: made anew
    assert cached_split(path) == first
    assert (folder / "second.onnx").read_bytes() == first.second


def test_a_graph_without_selections_is_recorded_as_not_split(tmp_path, monkeypatch):
    nodes = [helper.make_node("Relu", ["x"], ["y"])]
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2]) for n in ("x", "y")]
    graph = helper.make_graph(nodes, "g", io[:1], io[1:])
    path = tmp_path / "plain.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    assert cached_split(path) is None
    monkeypatch.setattr(onnx_split, "split_at_selections", lambda model: pytest.fail("again"))
    assert cached_split(path) is None


@pytest.mark.parametrize(
    ("arch", "bands", "split"),
    [("mscn_resnet18", 4, True), ("resnet18", 3, False)],
    ids=["4-band MSCN", "plain ResNet: nothing to split"],
)
def test_other_models_run_split_or_whole_like_pytorch(tmp_path, arch, bands, split):
    import torch

    from mscn_geo.backends import prepare_runner
    from mscn_geo.models import ModelMeta, create_model, load_checkpoint, save_checkpoint
    from mscn_geo.pipeline import prepare_model

    torch.manual_seed(3)
    kwargs = {"dim": 32} if arch.startswith("mscn") else {}
    net = create_model(arch, num_classes=2, in_chans=bands, **kwargs).eval()
    meta = ModelMeta(
        class_names=["a", "b"],
        tile_size=64,
        pixel_size_m=1.0,
        bands=[f"b{i}" for i in range(1, bands + 1)],
        mean=[0.5] * bands,
        std=[0.25] * bands,
        training_data="none: test",
        trained=False,
    )
    path = save_checkpoint(tmp_path / "m.pt", net, arch, meta, arch_kwargs=kwargs)
    loaded = load_checkpoint(path)
    assert (cached_split(export_graph(loaded, 64)) is not None) == split
    cpu = torch.device("cpu")
    runner = prepare_runner(loaded, cpu, None, backend="onnxruntime")
    x = torch.rand(3, bands, 64, 64)
    with torch.inference_mode():
        want = prepare_model(loaded.model, cpu, None)(x)
        got = runner.normalised(x)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
