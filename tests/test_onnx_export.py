"""ONNX export: parity with classify in onnxruntime, Deepness metadata and variant, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import rasterio
import torch
from mscn_geo_cli.main import main
from rasterio.windows import Window

from mscn_geo.models import load_checkpoint
from mscn_geo.onnx_export import export_onnx
from tests.conftest import SHARED, TINY_CLASSES, TINY_TILE, classify_and_read

TOL = 1e-4


@pytest.fixture(scope="module")
def tiny_exports(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory):
    """The tiny model exported both ways: classifier with dynamo, Deepness with torchscript."""
    folder = tmp_path_factory.mktemp("onnx")
    return {
        variant: export_onnx(
            folder / f"{variant}.onnx", tiny_checkpoint, variant=variant, exporter=exporter
        )
        for variant, exporter in (("classifier", "dynamo"), ("deepness", "torchscript"))
    }


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _run(session: ort.InferenceSession, x: np.ndarray) -> np.ndarray:
    return session.run(None, {session.get_inputs()[0].name: x.astype(np.float32)})[0]


def _tiles(scene: Path, tile: int, n: int | None = None) -> np.ndarray:
    """(n, bands, tile, tile) uint8: the scene's full tiles in grid order."""
    with rasterio.open(scene) as ds:
        windows = [
            Window(c, r, tile, tile)
            for r in range(0, ds.height - tile + 1, tile)
            for c in range(0, ds.width - tile + 1, tile)
        ][:n]
        return np.stack([ds.read(window=w) for w in windows])


def _deepness_preprocess(tiles_nchw: np.ndarray, metadata: dict[str, str]) -> np.ndarray:
    """What Deepness does to a uint8 NHWC batch before its session.run, from the metadata."""
    nhwc = np.transpose(tiles_nchw, (0, 2, 3, 1))
    x = np.float32(nhwc * 1.0 / 255.0)
    mean = np.array(json.loads(metadata["standardization_mean"]), dtype=np.float32)
    std = np.array(json.loads(metadata["standardization_std"]), dtype=np.float32)
    return np.transpose((x - mean) / std, (0, 3, 1, 2))


def test_classifier_matches_classify_on_generated_tiles(
    tiny_exports, tiny_model, make_scene, tmp_path
):
    scene = make_scene(4 * TINY_TILE, 3 * TINY_TILE, nodata=None)
    _, frame, _, _ = classify_and_read(scene, tiny_model, tmp_path / "out", backend="onnxruntime")
    want = frame.sort_values(["row", "col"])[[f"p_{c}" for c in TINY_CLASSES]].to_numpy()
    session = _session(tiny_exports["classifier"].path)
    tiles = _tiles(scene, TINY_TILE)
    assert len(tiles) == len(want) == 12
    # Batch sizes other than the export's example: the batch axis is dynamic.
    got = np.concatenate([_run(session, tiles[:1]), _run(session, tiles[1:])])
    assert got.shape == (12, len(TINY_CLASSES))
    np.testing.assert_allclose(got, want, atol=TOL, rtol=0)
    assert len(set(got.argmax(1))) > 1  # the tiles really differ in class


def test_metadata_reads_as_deepness_reads_it(tiny_exports):
    for variant, export in tiny_exports.items():
        meta = _session(export.path).get_modelmeta().custom_metadata_map
        names = json.loads(meta["class_names"])
        assert [names[k] for k in sorted(names, key=int)] == TINY_CLASSES
        assert [int(k) for k in sorted(names, key=int)] == list(range(len(TINY_CLASSES)))
        assert json.loads(meta["resolution"]) == pytest.approx(50.0)  # 0.5 m = 50 cm/px
        assert json.loads(meta["tile_size"]) == TINY_TILE
        assert json.loads(meta["tiles_overlap"]) == 0
        own = json.loads(meta["mscn_geo"])
        assert own["arch"] == "mscn_resnet18" and own["bands"] == ["red", "green", "blue"]
        model_type = str(json.loads(meta["model_type"])).capitalize()
        assert model_type == ("Segmentor" if variant == "deepness" else "Classifier")
    deepness = _session(tiny_exports["deepness"].path).get_modelmeta().custom_metadata_map
    assert json.loads(deepness["standardization_mean"]) == pytest.approx([0.485, 0.456, 0.406])
    assert json.loads(deepness["seg_thresh"]) == 0


def test_deepness_variant_runs_as_deepness_runs_it(tiny_exports, tiny_model, make_scene):
    scene = make_scene(4 * TINY_TILE, 2 * TINY_TILE, nodata=None)
    tiles = _tiles(scene, TINY_TILE)
    classifier = _run(_session(tiny_exports["classifier"].path), tiles)
    session = _session(tiny_exports["deepness"].path)
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    # Deepness checks: one input, NCHW, square 4-D output, dynamic batch.
    assert isinstance(inp.shape[0], str) and inp.shape[1:] == [3, TINY_TILE, TINY_TILE]
    assert len(out.shape) == 4 and out.shape[2] == out.shape[3] == TINY_TILE
    meta = session.get_modelmeta().custom_metadata_map
    spread = _run(session, _deepness_preprocess(tiles, meta))
    assert spread.shape == (len(tiles), len(TINY_CLASSES), TINY_TILE, TINY_TILE)
    # Every pixel carries the tile's probabilities; Deepness's argmax gives its class.
    np.testing.assert_allclose(spread[:, :, 17, 41], classifier, atol=TOL, rtol=0)
    assert (spread.min(axis=(2, 3)) == spread.max(axis=(2, 3))).all()
    np.testing.assert_array_equal(spread.argmax(1), np.broadcast_to(
        classifier.argmax(1)[:, None, None], (len(tiles), TINY_TILE, TINY_TILE)
    ))  # fmt: skip


def test_classifier_metadata_convention_reproduces_its_input(tiny_exports, make_scene):
    """Deepness's (x / 255 - mean) / std with the plain export's metadata gives 0..255 pixels."""
    tiles = _tiles(make_scene(2 * TINY_TILE, TINY_TILE, nodata=None), TINY_TILE)
    session = _session(tiny_exports["classifier"].path)
    meta = session.get_modelmeta().custom_metadata_map
    fed = _deepness_preprocess(tiles, meta)
    np.testing.assert_allclose(fed, tiles.astype(np.float32), atol=1e-3)
    np.testing.assert_allclose(_run(session, fed), _run(session, tiles), atol=TOL, rtol=0)


def test_export_cli_json_and_bad_input(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "m.onnx"
    args = ["export", str(tiny_checkpoint), "--onnx", str(out), "--deepness"]
    assert main([*args, "--exporter", "torchscript", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["output"]["shape"] == ["batch", len(TINY_CLASSES), TINY_TILE, TINY_TILE]
    assert summary["size_bytes"] == out.stat().st_size > 1_000_000
    assert summary["parity_max_abs_diff"] <= TOL
    # Exists without --overwrite.
    assert main(["export", str(tiny_checkpoint), "--onnx", str(out)]) == 2
    assert "exists; use --overwrite" in capsys.readouterr().err
    # Not our checkpoint: a plain torch state dict, and a text file.
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, foreign)
    notes = tmp_path / "notes.pt"
    notes.write_text("not a checkpoint")
    assert main([*args, "--exporter", "jit"]) == 2
    assert "unknown exporter 'jit'" in capsys.readouterr().err
    for bad in (foreign, notes):
        target = tmp_path / f"{bad.stem}.onnx"
        assert main(["export", str(bad), "--onnx", str(target)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "checkpoint" in err[0], err
        assert not target.exists()
    assert main(["export", str(tiny_checkpoint), "--onnx", str(tmp_path / "m.txt")]) == 2
    assert "must end in .onnx" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["foreign.pt", "m.onnx", "notes.pt"]


@pytest.mark.skipif(not (SHARED / "data").is_dir(), reason="needs ../shared (real imagery)")
def test_bundled_model_parity_on_real_tiles(tmp_path):
    """The bundled model in onnxruntime vs PyTorch on real aerial tiles and UC Merced images."""
    from PIL import Image

    from mscn_geo.pipeline import Normaliser

    loaded = load_checkpoint()
    export = export_onnx(tmp_path / "bundled.onnx", loaded)
    tile = loaded.meta.tile_size
    aerial = _tiles(SHARED / "data" / "scenes" / "aerial_rgb_025m.tif", tile, n=6)
    merced = []
    for name in ("forest/forest00", "harbor/harbor00", "runway/runway00", "beach/beach00"):
        image = Image.open(SHARED / "data" / "ucmerced" / f"{name}.webp").convert("RGB")
        merced.append(np.asarray(image.resize((tile, tile))).transpose(2, 0, 1))
    tiles = np.concatenate([aerial, np.stack(merced)])
    with torch.inference_mode():
        norm = Normaliser(loaded.meta, torch.device("cpu"))
        want = loaded.model(norm(list(tiles))).softmax(-1).numpy()
    got = _run(_session(export.path), tiles)
    np.testing.assert_allclose(got, want, atol=TOL, rtol=0)
    names = [loaded.meta.class_names[i] for i in got[-4:].argmax(1)]
    assert names[0] == "forest" and names[2] == "runway", names


def test_export_attention_path_equals_fused_path_with_ties():
    """The plain-tensor MSC attention the exporters trace gives the fused path's output."""
    from mscn_geo.models.sparse_attention import dense_dual_topk_attention, dual_topk_attention

    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 4, 10, 8, generator=g) for _ in range(3))
    k[:, :, 5:] = k[:, :, :5]  # repeated keys: tied scores at the thresholds
    a1, a2 = torch.tensor([0.7]), torch.tensor([0.2])
    for k_a, k_b in ((5, 2), (2, 5), (3, 3), (1, 10)):
        fused = dual_topk_attention(q, k, v, a1, a2, k_a, k_b, 0.35)
        dense = dense_dual_topk_attention(q, k, v, a1, a2, k_a, k_b, 0.35)
        torch.testing.assert_close(dense, fused, atol=1e-6, rtol=1e-5)
