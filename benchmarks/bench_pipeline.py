"""Classify throughput vs model-only throughput, in one run, on one device.

Model-only: random normalised tensors of the classify batch size through the
same prepared runner (:func:`mscn_geo.backends.prepare_runner`: same backend, device,
autocast, memory format, compiled or not), as many tiles as the scene has,
timed before and after the classify runs (the mean is reported: the machine
may be shared). Classify: the streaming loop (``predict_tiles``: read, batch,
normalise, model, results) and the whole ``classify_scene`` (plus GeoPackage
and class-raster writing, when geopandas is installed) on a generated tiled
GeoTIFF. Target: classify >= 85% of model-only.

    python benchmarks/bench_pipeline.py --out benchmarks/results/pipeline_cpu.json
    python benchmarks/bench_pipeline.py --device cuda --batch-size 128 --workers 8 --size 16384
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
from _common import GpuSampler, machine, random_model, sync, timed, write_scene


def model_only(runner: Any, batch_size: int, tiles: int, tile_size: int) -> dict[str, float]:
    """Tiles/s of ``runner`` on random normalised batches (warm-up excluded)."""
    device = runner.device
    x = torch.randn(batch_size, 3, tile_size, tile_size, device=device)
    if runner.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    batches = max(1, math.ceil(tiles / batch_size))
    with torch.inference_mode():
        for _ in range(2):
            runner(x)
        sync(device)

        def go() -> None:
            for _ in range(batches):
                runner(x)
            sync(device)

        cpu0 = time.process_time()
        _, seconds = timed(go)
        cpu = time.process_time() - cpu0
    n = batches * batch_size
    return {"tiles": n, "seconds": seconds, "tiles_per_s": n / seconds, "cpu_s": cpu}


def run(args: argparse.Namespace) -> dict[str, Any]:
    from mscn_geo.backends import prepare_runner, resolve_backend
    from mscn_geo.device import amp_name, autocast_dtype, resolve_device
    from mscn_geo.models import load_checkpoint
    from mscn_geo.options import ClassifyOptions
    from mscn_geo.plan import plan_scene
    from mscn_geo.predict import predict_tiles

    device = resolve_device(args.device)
    result: dict[str, Any] = {"benchmark": "pipeline", "machine": machine(device)}
    # The bundled model by default: ``--backend auto`` then picks what a user's run
    # picks (torch-bf16 needs the checkpoint's agreement record; random weights have none).
    model = load_checkpoint() if args.model == "bundled" else random_model(args.tile_size)
    if model.meta.tile_size != args.tile_size:
        raise SystemExit(
            f"--tile-size {args.tile_size}: the bundled model's is {model.meta.tile_size} "
            "(--model random for another)"
        )
    options = ClassifyOptions(
        batch_size=args.batch_size,
        device=str(device),
        workers=args.workers,
        channels_last=args.channels_last == "on",
        backend=args.backend,
        amp={"auto": None, "on": True, "off": False}[args.amp],
        compile=args.compile,
        overwrite=True,
    )
    amp = autocast_dtype(device, options.amp)
    with tempfile.TemporaryDirectory(prefix="mscn-bench-") as tmp:
        scene, gen_s = timed(write_scene, Path(tmp) / "scene.tif", args.size, block=args.block)
        warm = write_scene(Path(tmp) / "warm.tif", args.tile_size * 2, block=args.block)
        plan = plan_scene(scene, model.meta, options)
        n_tiles = len(plan.grid)
        runner, compile_s = timed(
            prepare_runner,
            model,
            device,
            amp,
            backend=options.backend,
            channels_last=options.channels_last,
            compile=options.compile,
        )
        # Warm-up (and compilation with --compile) outside every timed region.
        warm_plan = plan_scene(warm, model.meta, options)
        _, warm_s = timed(predict_tiles, warm_plan.info, warm_plan.grid, model, options)
        # Alternate model-only and classify rounds: on a shared machine the load
        # changes within a run, and each round's ratio compares neighbours in time.
        rounds = []
        for _ in range(args.rounds):
            ref = model_only(runner, args.batch_size, n_tiles, args.tile_size)
            cpu0 = time.process_time()
            with GpuSampler(device) as gpu:
                _, loop_s = timed(predict_tiles, plan.info, plan.grid, model, options)
                sync(device)
            loop_cpu = time.process_time() - cpu0
            rounds.append(
                {
                    "model_only_tiles_per_s": round(ref["tiles_per_s"], 2),
                    "loop_tiles_per_s": round(n_tiles / loop_s, 2),
                    "ratio": round(n_tiles / loop_s / ref["tiles_per_s"], 3),
                    # CPU seconds of this process per tile: barely moved by other
                    # users' load, but blind to overlap (only wall time sees that).
                    "model_only_cpu_ms_per_tile": round(ref["cpu_s"] / ref["tiles"] * 1e3, 2),
                    "loop_cpu_ms_per_tile": round(loop_cpu / n_tiles * 1e3, 2),
                    "cpu_ratio": round(ref["cpu_s"] / ref["tiles"] / (loop_cpu / n_tiles), 3),
                    "load": round(os.getloadavg()[0], 2),
                    **gpu.summary(),
                }
            )
        full: dict[str, Any]
        try:
            import geopandas  # noqa: F401

            from mscn_geo.classify import classify_scene

            options.out_dir = Path(tmp) / "out"
            summary, full_s = timed(classify_scene, scene, model, options)
            after = model_only(runner, args.batch_size, n_tiles, args.tile_size)
            full = {
                "seconds": round(full_s, 3),
                "tiles_per_s": round(n_tiles / full_s, 2),
                "classified": summary.classified,
                "model_only_after_tiles_per_s": round(after["tiles_per_s"], 2),
                "ratio_to_model_only_after": round(n_tiles / full_s / after["tiles_per_s"], 3),
            }
        except ImportError as exc:
            full = {"skipped": f"classify_scene needs geopandas: {exc}"}

        from mscn_geo.reader import TileReader

        with TileReader(plan.info, plan.grid.tile) as reader:
            block = reader.block_shape
    ratios = sorted(r["ratio"] for r in rounds)
    best_model = max(r["model_only_tiles_per_s"] for r in rounds)
    best_loop = max(r["loop_tiles_per_s"] for r in rounds)
    result.update(
        {
            "scene": {
                "size_px": args.size,
                "tiles": n_tiles,
                "tile_size": args.tile_size,
                "block_shape": list(block),
                "tiles_aligned_to_blocks": args.size % args.tile_size == 0
                and args.tile_size % block[0] == 0
                and args.tile_size % block[1] == 0,
                "generate_s": round(gen_s, 2),
            },
            "config": {
                "model": model.label if args.model == "bundled" else "mscn_resnet18 (random)",
                "batch_size": args.batch_size,
                "workers": args.workers,
                "amp": amp_name(amp),
                "backend": resolve_backend(options.backend, device, amp, model),
                "channels_last": options.channels_last,
                "compile": options.compile,
                "prepare_s": round(compile_s, 2),
                "warmup_s": round(warm_s, 2),
            },
            "rounds": rounds,
            "model_only": {"best_tiles_per_s": best_model},
            "classify_loop": {
                "best_tiles_per_s": best_loop,
                "best_ratio": round(best_loop / best_model, 3),
                "median_round_ratio": ratios[len(ratios) // 2],
                "median_round_cpu_ratio": sorted(r["cpu_ratio"] for r in rounds)[len(rounds) // 2],
            },
            "classify_scene": full,
            "target": "classify tiles/s >= 0.85 x model-only tiles/s",
        }
    )
    result["target_met"] = bool(ratios[len(ratios) // 2] >= 0.85)
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096, help="scene edge in px")
    parser.add_argument("--tile-size", type=int, default=256)
    parser.add_argument("--block", type=int, default=256, help="GeoTIFF block edge in px")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--channels-last", choices=["on", "off"], default="on")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--backend", default="auto", help="auto, torch-bf16, torch, onnxruntime")
    parser.add_argument("--amp", choices=["auto", "on", "off"], default="auto")
    parser.add_argument("--rounds", type=int, default=3, help="model-only/classify pairs")
    parser.add_argument(
        "--model", choices=["bundled", "random"], default="bundled", help="weights (same speed)"
    )
    parser.add_argument("--out", type=Path, default=None, help="JSON file to write")
    args = parser.parse_args(argv)
    from _common import finish

    result = finish(run(args), args.out)
    loop = result["classify_loop"]
    print(
        f"model-only {result['model_only']['best_tiles_per_s']} tiles/s (best), "
        f"classify loop {loop['best_tiles_per_s']} (best), "
        f"median round ratio {loop['median_round_ratio']:.0%} "
        f"(CPU time: {loop['median_round_cpu_ratio']:.0%}), "
        f"classify_scene {result['classify_scene'].get('tiles_per_s')} tiles/s"
    )
    return result


if __name__ == "__main__":
    main()
