"""Interop figures: ONNX export time and size, onnxruntime vs PyTorch tiles/s, remote reads.

    python benchmarks/bench_interop.py --out benchmarks/results/interop_cpu.json

1. Export of the bundled model with each torch exporter: seconds and file size.
2. The exported classifier graph in onnxruntime vs the PyTorch model (channels
   last, inference mode, as classify runs it) on the same 0..255 tiles, CPU,
   side by side in one process: rounds alternate so load changes hit both.
3. Reading every tile of a tiled GeoTIFF through a Range-serving HTTP server on
   127.0.0.1 vs from the file on disk (same TileReader), and the bytes a
   two-tile corner read transfers.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import ROOT, finish, machine, write_scene


def bench_export(folder: Path) -> tuple[dict[str, Any], Path]:
    from mscn_geo.onnx_export import EXPORTERS, export_onnx

    out: dict[str, Any] = {}
    path = folder / "dynamo.onnx"
    for exporter in EXPORTERS:
        result = export_onnx(folder / f"{exporter}.onnx", exporter=exporter)
        out[exporter] = {
            "seconds": round(result.seconds, 2),
            "size_mib": round(result.size_bytes / 2**20, 2),
            "parity_max_abs_diff": result.max_abs_diff,
        }
    return out, path


def bench_runtime(onnx_path: Path, batch: int, rounds: int, batches: int) -> dict[str, Any]:
    import onnxruntime as ort

    from mscn_geo.models import load_checkpoint
    from mscn_geo.pipeline import Normaliser

    loaded = load_checkpoint()
    meta = loaded.meta
    model = loaded.model.eval().to(memory_format=torch.channels_last)
    norm = Normaliser(meta, torch.device("cpu"), channels_last=True)
    rng = np.random.default_rng(0)
    shape = (batch, meta.in_chans, meta.tile_size, meta.tile_size)
    tiles = rng.integers(0, 256, shape, dtype=np.uint8)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def run_torch() -> np.ndarray:
        with torch.inference_mode():
            return model(norm(list(tiles))).softmax(-1).numpy()

    def run_ort() -> np.ndarray:
        return session.run(None, {name: tiles.astype(np.float32)})[0]

    diff = float(np.abs(run_torch() - run_ort()).max())  # also the warm-up
    times: dict[str, list[float]] = {"pytorch": [], "onnxruntime": []}
    for _ in range(rounds):
        for label, run in (("pytorch", run_torch), ("onnxruntime", run_ort)):
            start = time.perf_counter()
            for _ in range(batches):
                run()
            times[label].append(batch * batches / (time.perf_counter() - start))
    result = {
        label: {"tiles_per_s": round(statistics.median(v), 2), "rounds": [round(x, 2) for x in v]}
        for label, v in times.items()
    }
    result["onnxruntime_vs_pytorch"] = round(
        result["onnxruntime"]["tiles_per_s"] / result["pytorch"]["tiles_per_s"], 3
    )
    return {
        "batch_size": batch,
        "batches_per_round": batches,
        "max_abs_prob_diff": diff,
        "torch_threads": torch.get_num_threads(),
        **result,
    }


def _read(scene: Path | str, tile: int, count: int | None = None) -> tuple[float, int]:
    """(seconds, decoded bytes) reading the first ``count`` tiles (all: None) in grid order."""
    from mscn_geo.reader import TileReader, open_scene
    from mscn_geo.remote import remote_access
    from mscn_geo.tiling import TileGrid

    with remote_access(scene):
        info = open_scene(scene, ["red", "green", "blue"])
        tiles = TileGrid(info.width, info.height, tile, tile).tiles()[:count]
        start = time.perf_counter()
        with TileReader(info, tile) as reader:
            pixels = sum(reader.read(t).pixels.nbytes for t in tiles)
        return time.perf_counter() - start, pixels


def bench_remote(folder: Path, size: int, tile: int) -> dict[str, Any]:
    from tests.http_range_server import RangeServer

    scene = write_scene(folder / "remote.tif", size, block=256)
    file_mib = scene.stat().st_size / 2**20
    local_s, pixels = _read(scene, tile)
    with RangeServer(folder) as server:
        remote_s, remote_pixels = _read(server.url("remote.tif"), tile)
        full_bytes, requests = server.bytes_sent, server.gets
        # A fresh name: GDAL caches what it read per URL within the process.
        (folder / "corner.tif").write_bytes(scene.read_bytes())
        server.reset_counts()
        _read(server.url("corner.tif"), tile, count=2)
        corner_bytes = server.bytes_sent
    assert pixels == remote_pixels
    mib = pixels / 2**20
    return {
        "scene_px": size,
        "tile_px": tile,
        "file_mib": round(file_mib, 2),
        "decoded_mib": round(mib, 1),
        "local": {"seconds": round(local_s, 3), "decoded_mib_per_s": round(mib / local_s, 1)},
        "http_127.0.0.1": {
            "seconds": round(remote_s, 3),
            "decoded_mib_per_s": round(mib / remote_s, 1),
            "file_mib_per_s": round(full_bytes / 2**20 / remote_s, 1),
            "bytes_transferred": full_bytes,
            "requests": requests,
        },
        "remote_vs_local_time": round(remote_s / local_s, 2),
        "corner_two_tiles_bytes": corner_bytes,
        "corner_fraction_of_file": round(corner_bytes / scene.stat().st_size, 4),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batches", type=int, default=2, help="batches per timed round")
    parser.add_argument("--size", type=int, default=4096, help="remote-read scene edge (px)")
    parser.add_argument("--tile-size", type=int, default=256)
    args = parser.parse_args(argv)
    result: dict[str, Any] = {"machine": machine(torch.device("cpu"))}
    with tempfile.TemporaryDirectory(prefix="bench-interop-") as tmp:
        folder = Path(tmp)
        result["export"], onnx_path = bench_export(folder)
        result["runtime"] = bench_runtime(onnx_path, args.batch_size, args.rounds, args.batches)
        result["remote"] = bench_remote(folder, args.size, args.tile_size)
    return finish(result, args.out)


if __name__ == "__main__":
    import json
    import sys

    sys.path.insert(0, str(ROOT))
    print(json.dumps(main(), indent=2))
