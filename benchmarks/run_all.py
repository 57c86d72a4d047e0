"""Run every benchmark, each in its own process, writing one JSON each under ``--out``.

    python benchmarks/run_all.py --out benchmarks/results          # CPU set, < 15 min
    python benchmarks/run_all.py --out benchmarks/results --device cuda

On CPU the sizes are chosen to finish in under 15 minutes on 2 cores; on CUDA
bigger batches, more reader threads and bigger scenes keep the GPU busy, and
bench_scale runs the real network at every size. A benchmark that fails (or
whose optional dependency is missing) is recorded in ``summary.json`` with its
error; the others still run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def plan(device: str, quick: bool, extra: bool = False) -> list[tuple[str, str, list[str]]]:
    """(result name, script, arguments) for each run."""
    if quick:  # seconds: the smoke test's sizes
        tiny = ["--device", device]
        return [
            (
                "pipeline",
                "bench_pipeline.py",
                [*tiny, "--size", "256", "--tile-size", "64", "--model", "random"],
            ),
            ("scale", "bench_scale.py", [*tiny, "--sizes", "300", "600"]),
            ("torchgeo", "bench_torchgeo.py", [*tiny, "--size", "256", "--tile-size", "64"]),
        ]
    if device.startswith("cuda"):
        gpu = ["--device", device, "--batch-size", "128", "--workers", "8"]
        runs = [
            # A 30,000 px scene (3,481 tiles of 256 px) with AMP (bf16) and without.
            ("pipeline_cuda", "bench_pipeline.py", [*gpu, "--size", "30000", "--rounds", "2"]),
            (
                "pipeline_cuda_fp32",
                "bench_pipeline.py",
                [*gpu, "--size", "30000", "--rounds", "2", "--amp", "off"],
            ),
            (
                "pipeline_cuda_contiguous",
                "bench_pipeline.py",
                [*gpu, "--size", "16384", "--channels-last", "off"],
            ),
            ("pipeline_cuda_compile", "bench_pipeline.py", [*gpu, "--size", "16384", "--compile"]),
            ("scale_cuda", "bench_scale.py", [*gpu, "--model", "resnet18"]),
            ("torchgeo_cuda", "bench_torchgeo.py", [*gpu, "--size", "16384"]),
            # The library's whole training run, bf16 autocast and fp32.
            ("train_cuda", "bench_train.py", ["--device", device]),
        ]
    else:
        cpu = ["--device", "cpu"]
        runs = [
            ("pipeline_cpu", "bench_pipeline.py", cpu),  # backend auto (torch-bf16 here)
            (
                "pipeline_cpu_torch",
                "bench_pipeline.py",
                [*cpu, "--backend", "torch", "--rounds", "2"],
            ),
            ("backends_cpu", "bench_backends.py", ["--rounds", "3", "--model-batches", "4"]),
            ("reader_cpu", "bench_reader.py", []),
            ("batch_startup_cpu", "bench_batch_startup.py", []),
            ("scale_cpu", "bench_scale.py", cpu),
            (
                "scale_cpu_resnet18",
                "bench_scale.py",
                [*cpu, "--model", "resnet18", "--sizes", "2000", "4000"],
            ),
            ("torchgeo_cpu", "bench_torchgeo.py", [*cpu, "--rounds", "2"]),
        ]
        # Settled findings, not rerun by default (README, Performance): channels-last
        # off and torch.compile were slower on CPU. ``--extra`` runs them.
        if extra:
            runs += [
                ("pipeline_cpu_contiguous", "bench_pipeline.py", [*cpu, "--channels-last", "off"]),
                (
                    "pipeline_cpu_compile",
                    "bench_pipeline.py",
                    [*cpu, "--backend", "torch", "--compile", "--rounds", "2"],
                ),
            ]
        # Benchmarks of other features, run when present. The chips fine-tune trains
        # for minutes: the default set times chip extraction and zero-shot only.
        finetune = [] if extra else ["--skip-train"]
        others = [
            ("overlap_cpu", "bench_overlap.py", []),
            ("quicklook_cpu", "bench_quicklook.py", []),
            ("chips_finetune_cpu", "bench_chips_finetune.py", finetune),
            ("interop_cpu", "bench_interop.py", []),
        ]
        runs += [run for run in others if (HERE / run[1]).exists()]
    if (HERE / "bench_msc.py").exists():
        if device.startswith("cuda"):
            runs.append(("msc_cuda", "bench_msc.py", ["--device", device]))
            runs.append(("msc_cuda_amp", "bench_msc.py", ["--device", device, "--amp"]))
        else:
            runs.append(("msc_cpu", "bench_msc.py", ["--rounds", "4", "--repeats", "2"]))
    return runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (smoke run)")
    parser.add_argument("--only", nargs="*", default=None, help="result names to run")
    parser.add_argument(
        "--extra",
        action="store_true",
        help="also the settled CPU variants and the full chips fine-tune (longer than 15 min)",
    )
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, dict[str, object]] = {}
    start = time.perf_counter()
    for name, script, script_args in plan(args.device, args.quick, args.extra):
        if args.only and name not in args.only:
            continue
        out = args.out / f"{name}.json"
        cmd = [sys.executable, str(HERE / script), *script_args, "--out", str(out)]
        print(f"== {name}: {' '.join(cmd[1:])}", flush=True)
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=HERE.parent, check=False)
        entry: dict[str, object] = {
            "script": script,
            "args": script_args,
            "seconds": round(time.perf_counter() - t0, 1),
            "returncode": proc.returncode,
        }
        if proc.returncode == 0 and out.exists():
            entry["result"] = str(out.relative_to(args.out))
        summary[name] = entry
    total = round(time.perf_counter() - start, 1)
    (args.out / "summary.json").write_text(
        json.dumps({"seconds": total, "load_after": os.getloadavg(), "runs": summary}, indent=2)
        + "\n"
    )
    failed = [k for k, v in summary.items() if v["returncode"] != 0]
    print(f"done in {total} s; failed: {', '.join(failed) or 'none'}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
