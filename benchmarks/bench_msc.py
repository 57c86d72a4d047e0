"""MSC fast path vs a plainly written dense reference of the published algorithm.

Same weights, same inputs, one run: forward (inference) and forward+backward,
at B=8, C=512, 8 heads, query 14x14, key/value 56x56 (a 448 px input).
Each (implementation, mode) is timed in its own subprocess so its peak
memory is its own: on CPU the growth of peak RSS over the set-up, on CUDA
``max_memory_allocated`` over what the inputs hold. Outputs (and gradients)
are compared in fp32 in the parent process.

    python benchmarks/bench_msc.py --out benchmarks/results/msc_cpu.json
    python benchmarks/bench_msc.py --device cuda --amp --out .../msc_cuda_amp.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from _common import ROOT, finish, machine

sys.path.insert(0, str(ROOT / "tests"))
from reference_msc import dense_msc

from mscn_geo.models import MSC

IMPLS = {"fused": lambda m, x, y: m(x, y), "dense": dense_msc}


def _setup(args: argparse.Namespace, device: torch.device):
    torch.manual_seed(0)
    msc = MSC(args.channels, num_heads=args.heads, k1=2, k2=6).to(device)
    x = torch.randn(args.batch, args.channels, args.query, args.query, device=device)
    y = torch.randn(args.batch, args.channels, args.kv, args.kv, device=device)
    return msc, x, y


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as fh:
        line = next(ln for ln in fh if ln.startswith(field + ":"))
    return int(line.split()[1]) / 1024


def _reset_peak_rss() -> float:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS; return that RSS (MiB).

    ``ru_maxrss`` would not do: it survives exec, so a child started by a big
    parent reports the parent's peak.
    """
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    return _status_mb("VmRSS")


def serve(args: argparse.Namespace) -> None:
    """Worker process: set up one implementation in one mode, then time on request.

    Each ``run`` line on stdin times ``repeats`` steps and answers one JSON line
    (median and min seconds, peak memory so far), so the parent can alternate
    the fused and dense workers round by round: both see the same machine load.
    """
    device = torch.device(args.device)
    msc, x, y = _setup(args, device)
    fn = IMPLS[args.impl]
    amp = torch.autocast(
        device.type,
        dtype=torch.bfloat16,
        enabled=args.amp,
    )

    def step() -> None:
        if args.mode == "forward":
            with torch.inference_mode(), amp:
                fn(msc, x, y)
        else:
            xg, yg = x.detach().requires_grad_(), y.detach().requires_grad_()
            with amp:
                out = fn(msc, xg, yg)
            out.float().sum().backward()
            msc.zero_grad(set_to_none=True)

    base = torch.cuda.memory_allocated() if device.type == "cuda" else _reset_peak_rss()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for _ in range(args.warmup):
        step()
    for _line in sys.stdin:
        times = []
        for _ in range(args.repeats):
            _sync(device)
            t0 = time.perf_counter()
            step()
            _sync(device)
            times.append(time.perf_counter() - t0)
        if device.type == "cuda":
            peak = (torch.cuda.max_memory_allocated() - base) / 2**20
        else:
            peak = _status_mb("VmHWM") - base
        answer = {
            "median_s": statistics.median(times),
            "min_s": min(times),
            "peak_mb": round(peak, 1),
        }
        print(json.dumps(answer), flush=True)


def parity(args: argparse.Namespace) -> dict[str, float]:
    """Max abs differences fused vs dense in fp32: output, input grads, weight grads."""
    device = torch.device(args.device)
    msc, x, y = _setup(args, device)
    grads = []
    for impl in ("fused", "dense"):
        xg, yg = x.clone().requires_grad_(), y.clone().requires_grad_()
        out = IMPLS[impl](msc, xg, yg)
        g = torch.autograd.grad(out.sum(), [xg, yg, *msc.parameters()])
        grads.append((out.detach(), g))
    (o1, g1), (o2, g2) = grads
    return {
        "output_max_abs_diff": (o1 - o2).abs().max().item(),
        "grad_x_max_abs_diff": (g1[0] - g2[0]).abs().max().item(),
        "grad_y_max_abs_diff": (g1[1] - g2[1]).abs().max().item(),
        "grad_params_max_abs_diff": max(
            (a - b).abs().max().item() for a, b in zip(g1[2:], g2[2:], strict=True)
        ),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--amp", action="store_true", help="bf16 autocast")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--channels", type=int, default=512)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--query", type=int, default=14)
    ap.add_argument("--kv", type=int, default=56)
    ap.add_argument("--repeats", type=int, default=3, help="steps per round")
    ap.add_argument("--rounds", type=int, default=5, help="alternating fused/dense rounds")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--impl", choices=IMPLS, help=argparse.SUPPRESS)
    ap.add_argument("--mode", choices=("forward", "train"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.impl:  # a worker subprocess
        serve(args)
        return
    device = torch.device(args.device)
    result: dict[str, Any] = {
        "benchmark": "msc",
        "machine": machine(device),
        "config": {k: v for k, v in vars(args).items() if k not in ("out", "impl", "mode")},
        "load_note": "speed-ups are medians of per-round ratios; rounds alternate the two workers",
        "parity_fp32": parity(args) if not args.amp else None,
        "runs": {},
    }
    base_cmd = [sys.executable, __file__, *sys.argv[1:]]
    if args.out:
        base_cmd = [a for a in base_cmd if a not in ("--out", str(args.out))]
    for mode in ("forward", "train"):
        # One process pair per mode, alternated round by round (order swapped each
        # round): the speed-up is the median of the per-round ratios.
        workers = {
            impl: subprocess.Popen(
                [*base_cmd, "--impl", impl, "--mode", mode],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            for impl in ("fused", "dense")
        }
        rounds: list[dict[str, Any]] = []
        try:
            for r in range(args.rounds):
                entry = {}
                for impl in ("fused", "dense") if r % 2 == 0 else ("dense", "fused"):
                    proc = workers[impl]
                    proc.stdin.write("run\n")  # type: ignore[union-attr]
                    proc.stdin.flush()  # type: ignore[union-attr]
                    entry[impl] = json.loads(proc.stdout.readline())  # type: ignore[union-attr]
                entry["speedup"] = round(entry["dense"]["median_s"] / entry["fused"]["median_s"], 3)
                rounds.append(entry)
        finally:
            for proc in workers.values():
                proc.stdin.close()  # type: ignore[union-attr]
                proc.wait()
        speedups = [e["speedup"] for e in rounds]
        for impl in ("fused", "dense"):
            result["runs"][f"{impl}_{mode}"] = {
                "median_s": statistics.median(e[impl]["median_s"] for e in rounds),
                "min_s": min(e[impl]["min_s"] for e in rounds),
                "peak_mb": max(e[impl]["peak_mb"] for e in rounds),
            }
        fused, dense = result["runs"][f"fused_{mode}"], result["runs"][f"dense_{mode}"]
        result[f"{mode}_round_speedups"] = speedups
        result[f"{mode}_speedup"] = round(statistics.median(speedups), 2)
        result[f"{mode}_memory_ratio"] = round(fused["peak_mb"] / max(dense["peak_mb"], 1e-6), 3)
    result["target"] = "train (forward+backward) speed-up, median of rounds, >= 2"
    result["target_met"] = result["train_speedup"] >= 2.0
    finish(result, args.out)
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=1))


if __name__ == "__main__":
    main()
