"""Reader only (no model): the pipeline's reader vs plain rasterio windowed reads.

For a deflate and a JPEG tiled GeoTIFF and a COG, tiles/s of the
pipeline's reading stage (:func:`mscn_geo.pipeline.read_ahead` over
:class:`mscn_geo.reader.TileReader`: decode, validity mask, nodata fraction) for
1, 2, 4 and 8 worker threads, against plain single-threaded
``rasterio.open(...).read(window=...)`` of the same windows. Per-worker
efficiency = tiles/s(w) / (w x plain tiles/s); target >= 0.9 up to the core count.

Two contents: ``aerial`` (the target's: the repository's real 1000 px aerial
image, sample_data/aerial_rgb_025m.tif, mirrored into a mosaic, so blocks decode
like real imagery) and ``pattern`` (the generated benchmark pattern, which
deflate shrinks about 100:1: decoding is nearly free, so it shows the reader's
fixed per-tile costs at their worst).

The scene is 8192 px (1,024 tiles; about 0.35 s of reading): each read starts
its worker threads and opens one dataset handle per thread, and the last run of
one worker ends alone; on a 4096 px scene (256 tiles, 90 ms) those per-scene
costs took 10 to 25 % of the 2-worker figure, while the plain reads open their
handle outside the timer (README, Performance).

Also: the bundled model's FLOPs per tile (``torch.utils.flop_counter``) and, from
an H100's dense bf16 peak and an assumed model FLOPs utilisation, the tiles/s one
H100 would consume and how many reader workers at the measured rate that takes.

    python benchmarks/bench_reader.py --out benchmarks/results/reader_cpu.json
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from _common import finish, machine, random_model, write_scene

H100_BF16_DENSE_FLOPS = 989e12  # H100 SXM, dense bf16 tensor-core peak (NVIDIA data sheet)


AERIAL = Path(__file__).resolve().parents[1] / "sample_data" / "aerial_rgb_025m.tif"


def write_aerial_scene(path: Path, size: int, compress: str) -> Path:
    """A ``size`` px tiled GeoTIFF of the real aerial image, mirrored to fill it."""
    import numpy as np
    import rasterio

    with rasterio.open(AERIAL) as src:
        image = src.read()
        profile = {"crs": src.crs, "transform": src.transform}
    reps = -(-size // (2 * image.shape[1])), -(-size // (2 * image.shape[2]))
    quad = np.concatenate([image, image[:, ::-1]], axis=1)
    quad = np.concatenate([quad, quad[:, :, ::-1]], axis=2)
    mosaic = np.tile(quad, (1, *reps))[:, :size, :size]
    mosaic = np.maximum(mosaic, 1)  # 0 is the nodata value: keep every pixel valid
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=size,
        height=size,
        count=3,
        dtype="uint8",
        nodata=0,
        tiled=True,
        blockxsize=256,
        blockysize=256,
        compress=compress,
        interleave="pixel",
        **profile,
    ) as dst:
        dst.write(mosaic)
    return path


def make_files(tmp: Path, size: int, content: str) -> dict[str, Path]:
    import rasterio.shutil

    def scene(name: str, compress: str) -> Path:
        if content == "aerial":
            return write_aerial_scene(tmp / f"{content}_{name}.tif", size, compress)
        return write_scene(tmp / f"{content}_{name}.tif", size, compress=compress)

    files = {"deflate": scene("deflate", "deflate"), "jpeg": scene("jpeg", "jpeg")}
    cog = tmp / f"{content}_cog.tif"
    rasterio.shutil.copy(files["deflate"], cog, driver="COG", COMPRESS="DEFLATE", BLOCKSIZE=256)
    files["cog"] = cog
    return files


def plain_reads(path: Path, windows: list[Any]) -> float:
    """Tiles/s of single-threaded rasterio windowed reads (masks included, as the reader)."""
    import rasterio

    with rasterio.open(path) as ds:
        t0 = time.perf_counter()
        for w in windows:
            ds.read(window=w)
            ds.read_masks(1, window=w)
        return len(windows) / (time.perf_counter() - t0)


def pipeline_reads(path: Path, workers: int, tile: int) -> tuple[float, int]:
    from mscn_geo.models import ModelMeta
    from mscn_geo.options import ClassifyOptions
    from mscn_geo.pipeline import read_ahead
    from mscn_geo.plan import plan_scene
    from mscn_geo.reader import TileReader

    meta = ModelMeta(class_names=["a", "b"], tile_size=tile)
    plan = plan_scene(path, meta, ClassifyOptions())
    tiles = list(plan.grid.iter_tiles(0, len(plan.grid)))
    depth = max(32, workers * 4)  # as predict_tiles: 2 batches of 16, or 4 per worker
    with TileReader(plan.info, plan.grid.tile) as reader:
        t0 = time.perf_counter()
        n = sum(1 for _ in read_ahead(reader, tiles, workers, depth))
        return n / (time.perf_counter() - t0), n


def one_file(path: Path, windows: list[Any], args: argparse.Namespace) -> dict[str, Any]:
    """Plain reads and the pipeline's reader with each worker count, best of the rounds."""
    plain_reads(path, windows[:8])  # warm the file cache
    plain = max(plain_reads(path, windows) for _ in range(args.rounds))
    entry: dict[str, Any] = {"plain_tiles_per_s": round(plain, 1), "workers": {}}
    for w in args.workers:
        tps = max(pipeline_reads(path, w, args.tile_size)[0] for _ in range(args.rounds))
        entry["workers"][str(w)] = {
            "tiles_per_s": round(tps, 1),
            "per_worker_vs_plain": round(tps / (w * plain), 3),
            "vs_plain": round(tps / plain, 3),
        }
    entry["load"] = round(os.getloadavg()[0], 2)
    return entry


def model_flops(tile: int) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    model = random_model(tile_size=tile).model.eval()  # FLOPs do not depend on the weights
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(torch.randn(1, 3, tile, tile))
    return float(counter.get_total_flops())


def run(args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {"benchmark": "reader", "machine": machine(torch.device("cpu"))}
    cores = os.cpu_count() or 1
    per_content: dict[str, Any] = {}
    from rasterio.windows import Window

    t = args.tile_size
    windows = [Window(c, r, t, t) for r in range(0, args.size, t) for c in range(0, args.size, t)]
    for content in ("aerial", "pattern"):
        per_content[content] = per_file = {}
        with tempfile.TemporaryDirectory(prefix="mscn-bench-reader-") as tmp:
            files = make_files(Path(tmp), args.size, content)
            for name, path in files.items():
                per_file[name] = one_file(path, windows, args)
    flops = model_flops(args.tile_size)
    need = args.mfu * H100_BF16_DENSE_FLOPS / flops
    target = per_content["aerial"]
    worst = min(v["plain_tiles_per_s"] for v in target.values())
    result.update(
        {
            "scene": {"size_px": args.size, "tile_size": args.tile_size, "tiles": len(windows)},
            "files": target,
            "pattern_files": per_content["pattern"],
            "target": "per worker >= 0.9 x plain single-threaded reads, up to the core count "
            "(aerial content)",
            "target_met": all(
                v["workers"][str(w)]["per_worker_vs_plain"] >= 0.9
                for v in target.values()
                for w in args.workers
                if w <= cores
            ),
            "gpu_feed": {
                "model_gflops_per_tile": round(flops / 1e9, 3),
                "h100_bf16_dense_tflops": H100_BF16_DENSE_FLOPS / 1e12,
                "assumed_mfu": args.mfu,
                "h100_tiles_per_s": round(need),
                "reader_tiles_per_s_per_core_slowest_format": worst,
                "reader_cores_needed": math.ceil(need / worst),
            },
        }
    )
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=8192, help="scene edge in px")
    parser.add_argument("--tile-size", type=int, default=256)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--rounds", type=int, default=2, help="best of this many")
    parser.add_argument("--mfu", type=float, default=0.35, help="assumed H100 FLOPs use")
    parser.add_argument("--out", type=Path, default=None, help="JSON file to write")
    args = parser.parse_args(argv)
    result = finish(run(args), args.out)
    for content, files in (("aerial", result["files"]), ("pattern", result["pattern_files"])):
        for name, v in files.items():
            ws = ", ".join(f"{w}: {x['per_worker_vs_plain']}" for w, x in v["workers"].items())
            plain = v["plain_tiles_per_s"]
            print(f"{content} {name}: plain {plain} tiles/s; per-worker vs plain {ws}")
    print(result["gpu_feed"])
    return result


if __name__ == "__main__":
    main()
