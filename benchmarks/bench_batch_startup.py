"""Start-up paid once: one ``mscn-geo classify`` over 100 small scenes vs over one.

The command (a subprocess, as a user runs it) prints one JSON line per scene
with the seconds spent on it; the rest of its wall time is start-up (Python and
library imports, checkpoint load, backend preparation outside the scenes) and
exit. Paid once, the start-up of the 100-scene run is close to the one-scene
run's, and later scenes are not slower than the median (the model and the
backend session are prepared once, on the first scene).

    python benchmarks/bench_batch_startup.py --out benchmarks/results/batch_startup_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from _common import ROOT, finish, machine, write_scene


def command(scenes: Path, out: Path, backend: str) -> dict[str, Any]:
    exe = Path(sys.executable).with_name("mscn-geo")  # the console script of this venv
    cmd = [str(exe), "classify", str(scenes), "--out", str(out), "--device", "cpu"]
    cmd += ["--backend", backend, "--overwrite", "--quiet", "--json"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"classify failed ({proc.returncode}): {proc.stderr[-500:]}")
    per_scene = [json.loads(line)["seconds"] for line in proc.stdout.splitlines() if line.strip()]
    return {
        "scenes": len(per_scene),
        "wall_s": round(wall, 2),
        "in_scenes_s": round(sum(per_scene), 2),
        "startup_and_exit_s": round(wall - sum(per_scene), 2),
        "first_scene_s": round(per_scene[0], 3),
        "median_scene_s": round(statistics.median(per_scene), 3),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {"benchmark": "batch_startup", "machine": machine(torch.device("cpu"))}
    with tempfile.TemporaryDirectory(prefix="mscn-bench-batch-") as tmp_name:
        tmp = Path(tmp_name)
        one, many = tmp / "one", tmp / "many"
        one.mkdir()
        many.mkdir()
        write_scene(one / "scene_000.tif", args.size)
        for i in range(args.scenes):
            write_scene(many / f"scene_{i:03d}.tif", args.size, seed=i)
        command(one, tmp / "warm", args.backend)  # fills the ONNX cache, warms the page cache
        single = command(one, tmp / "out1", args.backend)
        batch = command(many, tmp / "out100", args.backend)
        batch["load"] = round(os.getloadavg()[0], 2)
    result.update(
        {
            "scene": {"size_px": args.size, "tiles_each": (args.size // 256) ** 2},
            "backend": args.backend,
            "one_scene": single,
            "batch": batch,
            "startup_ratio_batch_to_single": round(
                batch["startup_and_exit_s"] / max(single["startup_and_exit_s"], 1e-6), 2
            ),
            "separate_commands_estimate_s": round(args.scenes * single["wall_s"], 1),
        }
    )
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=100)
    parser.add_argument("--size", type=int, default=512, help="scene edge in px")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--out", type=Path, default=None, help="JSON file to write")
    args = parser.parse_args(argv)
    result = finish(run(args), args.out)
    print(json.dumps({k: result[k] for k in ("one_scene", "batch")}, indent=1))
    return result


if __name__ == "__main__":
    main()
