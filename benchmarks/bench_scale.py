"""Bounded memory and flat time per pixel: classify 2,000 / 8,000 / 30,000 px scenes.

Each size is a generated 3-band uint8 tiled (256 px blocks, deflate) GeoTIFF,
classified by ``classify_scene`` (read, normalise, model, GeoPackage and class
raster written) in a fresh child process, so that its peak RSS
(``ru_maxrss``) is its own. Targets: peak RSS < 2 GB at 30,000 px; time per
pixel flat from 2,000 to 30,000 px.

Which model runs (``--model``), and so what "time per pixel" measures:

* ``cheap`` (default on CPU): a mean-colour + linear classifier whose compute
  is negligible. The whole scene goes through the real reading, batching,
  normalising and output-writing path, so this times the pipeline itself and
  shows whether it stays flat and bounded; it does not time the network.
* ``resnet18``: the bundled architecture (mscn_resnet18, random weights). On
  CPU a 30,000 px scene (13,689 tiles) would take ~10 minutes, so run it on a
  GPU or with ``--sizes 2000``.

    python benchmarks/bench_scale.py --out benchmarks/results/scale_cpu.json
    python benchmarks/bench_scale.py --device cuda --model resnet18 --batch-size 128 --workers 8
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import ROOT, RssSampler, cheap_model, finish, machine, peak_rss_mb, random_model
from _common import write_scene as make_scene


def child(args: argparse.Namespace) -> None:
    """Classify ``args.scene`` and print one JSON line (runs in its own process)."""
    from mscn_geo.classify import classify_scene
    from mscn_geo.options import ClassifyOptions

    model = random_model() if args.model == "resnet18" else cheap_model()
    options = ClassifyOptions(
        batch_size=args.batch_size,
        device=args.device,
        workers=args.workers,
        out_dir=Path(args.scene).parent / "out",
        overwrite=True,
        backend="torch",  # the pipeline's cost with its figures before ONNX Runtime
    )
    # One-off costs (lazy imports, GDAL driver set-up, thread start) are not per
    # pixel: classify a small scene first, outside the timed run.
    warm = make_scene(Path(args.scene).parent / "warm.tif", 512)
    classify_scene(warm, model, options)
    base_mb = peak_rss_mb()
    with RssSampler() as rss:
        start = time.perf_counter()
        summary = classify_scene(args.scene, model, options)
        seconds = time.perf_counter() - start
    sizes = {k: Path(v).stat().st_size for k, v in summary.outputs.items()}
    print(
        json.dumps(
            {
                "seconds": seconds,
                "tiles": summary.tiles,
                "classified": summary.classified,
                "peak_rss_mb": peak_rss_mb(),
                "sampled_peak_rss_mb": rss.peak_mb,
                "rss_before_classify_mb": base_mb,
                "output_bytes": sizes,
            }
        )
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    from mscn_geo.device import resolve_device

    device = resolve_device(args.device)
    result: dict[str, Any] = {
        "benchmark": "scale",
        "machine": machine(device),
        "config": {
            "model": args.model,
            "model_note": (
                "mean colour + linear layer: negligible compute, times the read/normalise/"
                "write path over the whole scene"
                if args.model == "cheap"
                else "mscn_resnet18, random weights"
            ),
            "tile_size": 256,
            "block": 256,
            "batch_size": args.batch_size,
            "workers": args.workers,
            "measured": (
                "whole classify_scene per size in a fresh process, after a 512 px warm-up "
                "classify in that process; peak RSS = ru_maxrss of that process"
            ),
        },
        "sizes": [],
    }
    with tempfile.TemporaryDirectory(prefix="mscn-scale-") as tmp:
        for size in args.sizes:
            folder = Path(tmp) / str(size)
            folder.mkdir()
            start = time.perf_counter()
            scene = make_scene(folder / "scene.tif", size)
            gen_s = time.perf_counter() - start
            cmd = [
                sys.executable,
                str(Path(__file__).resolve()),
                "--child",
                str(scene),
                "--model",
                args.model,
                "--device",
                str(device),
                "--batch-size",
                str(args.batch_size),
                "--workers",
                str(args.workers),
            ]
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=False)
            if proc.returncode != 0:
                raise RuntimeError(f"size {size} failed:\n{proc.stderr[-2000:]}")
            row = json.loads(proc.stdout.strip().splitlines()[-1])
            pixels = size * size
            row.update(
                {
                    "size_px": size,
                    "pixels": pixels,
                    "scene_bytes": scene.stat().st_size,
                    "generate_s": round(gen_s, 2),
                    "ns_per_pixel": round(row["seconds"] / pixels * 1e9, 3),
                    "tiles_per_s": round(row["tiles"] / row["seconds"], 2),
                }
            )
            row["seconds"] = round(row["seconds"], 4)
            for key in ("peak_rss_mb", "sampled_peak_rss_mb", "rss_before_classify_mb"):
                row[key] = round(row[key], 1)
            result["sizes"].append(row)
            print(
                f"{size} px: {row['tiles']} tiles in {row['seconds']} s, "
                f"{row['ns_per_pixel']} ns/px, peak RSS {row['peak_rss_mb']} MiB",
                flush=True,
            )
            scene.unlink()
    rows = result["sizes"]
    largest = rows[-1]
    ns = [r["ns_per_pixel"] for r in rows]
    result["summary"] = {
        "largest_size_px": largest["size_px"],
        "largest_peak_rss_mb": largest["peak_rss_mb"],
        "rss_target_met": bool(largest["peak_rss_mb"] < 2048),
        "ns_per_pixel": ns,
        "ns_per_pixel_largest_over_smallest": round(ns[-1] / ns[0], 3) if ns[0] else None,
        "flat_means": "largest/smallest time per pixel <= 1.25",
        "flat": bool(ns[0] and ns[-1] / ns[0] <= 1.25),
    }
    return result


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 8000, 30000])
    parser.add_argument("--model", choices=["cheap", "resnet18"], default="cheap")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="JSON file to write")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        args.scene = args.child
        child(args)
        return None
    return finish(run(args), args.out)


if __name__ == "__main__":
    main()
