"""Training throughput of ``train`` (the library's whole run), with AMP and without.

Writes a synthetic ImageFolder (``--classes`` x ``--per-class`` PNG chips of
``--size`` px: a colour per class plus noise), then runs
:func:`mscn_geo.training.train` for ``--epochs`` epochs with mixed precision on
and off. Throughput is taken from the step callback (each step ends with
``loss.item()``, which waits for the device): training images per second over
the epochs after the first (warm-up, cuDNN autotuning), plus the peak GPU
memory of each run. Augmentation, MixUp/CutMix and the optimiser step are all
inside the timed steps, as in a user's run.

    python benchmarks/bench_train.py --device cuda --out benchmarks/results/train_cuda.json
    python benchmarks/bench_train.py --device cpu --per-class 8 --size 64 --epochs 2
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
from _common import finish, machine


def write_folder(root: Path, classes: int, per_class: int, size: int, seed: int = 0) -> int:
    """An ImageFolder of RGB PNG chips; returns the number of images."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c in range(classes):
        folder = root / f"class_{c:02d}"
        folder.mkdir(parents=True)
        colour = rng.integers(30, 220, 3)
        for i in range(per_class):
            noise = rng.integers(-30, 30, (size, size, 3))
            pixels = np.clip(colour + noise, 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{i:04d}.png")
    return classes * per_class


def run_once(data: Path, out: Path, args: argparse.Namespace, amp: bool) -> dict[str, Any]:
    from mscn_geo.training import make_config, train

    device = torch.device(args.device)
    cfg = make_config(
        {
            "arch": args.arch,
            "input_size": args.size,
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "warmup_epochs": 1,
            "device": args.device,
            "amp": amp,
            "last_every_min": 1e6,
        }
    )
    steps: list[tuple[int, int, float]] = []  # (epoch, step, time)
    epoch = [0]

    def on_step(step: int, total: int) -> None:
        steps.append((epoch[0], step, time.perf_counter()))

    def on_epoch(_log: Any) -> None:
        epoch[0] += 1

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    summary = train(out, cfg, data_dir=data, overwrite=True, on_step=on_step, on_epoch=on_epoch)
    wall = time.perf_counter() - t0
    rates = []
    for e in range(1, args.epochs):  # epochs after the first
        times = [t for ep, _, t in steps if ep == e]
        if len(times) >= 2:
            rates.append((len(times) - 1) * args.batch_size / (times[-1] - times[0]))
    result: dict[str, Any] = {
        "amp": amp,
        "train_images_per_s": round(statistics.median(rates), 1) if rates else None,
        "per_epoch_images_per_s": [round(r, 1) for r in rates],
        "steps_per_epoch": max((s for _, s, _ in steps), default=0),
        "wall_s": round(wall, 2),
        "best_val_oa": summary.get("best_val_overall_accuracy"),
    }
    if device.type == "cuda":
        result["gpu_peak_allocated_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20)
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--arch", default="mscn_resnet18")
    ap.add_argument("--classes", type=int, default=21)
    ap.add_argument("--per-class", type=int, default=64)
    ap.add_argument("--size", type=int, default=256, help="chip edge in px")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--amp", choices=["both", "on", "off"], default="both")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    result: dict[str, Any] = {"benchmark": "train", "machine": machine(device)}
    with tempfile.TemporaryDirectory(prefix="mscn-train-") as tmp:
        data = Path(tmp) / "chips"
        images = write_folder(data, args.classes, args.per_class, args.size)
        modes = {"both": [True, False], "on": [True], "off": [False]}[args.amp]
        runs = [run_once(data, Path(tmp) / f"model_{m}.pt", args, m) for m in modes]
    result.update(
        {
            "config": {
                "arch": args.arch,
                "images": images,
                "chip_px": args.size,
                "batch_size": args.batch_size,
                "epochs": args.epochs,
            },
            "runs": runs,
        }
    )
    finish(result, args.out)
    for r in runs:
        print(f"amp={r['amp']}: {r['train_images_per_s']} training images/s, wall {r['wall_s']} s")
    return result


if __name__ == "__main__":
    main()
