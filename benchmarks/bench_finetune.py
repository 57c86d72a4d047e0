"""Fine-tuning the bundled model to a user's own legend on a CPU: wall time and held-out accuracy.

Builds, from the shared UC Merced pool (``../shared/data/ucmerced``, never in
the repo), a 5-class legend the bundled model does not have (residential,
vegetation, water, transport, farmland: groups of UC Merced classes, so every
head row is new) with 125 chips per class taken from the bundled model's own
*training* images (20 % of them validate the fine-tune: 500 training chips),
and a held-out set of the 272 images of those classes that the bundled model
never trained on. Then runs ``train --init bundled`` with the default
(CPU-sized) fine-tune schedule and, with ``--scratch``, the same architecture
from random weights within the same time budget, and evaluates both on the
held-out set. CPU time is reported next to wall time: on a shared machine the
wall time says more about the other processes than about this one.

    python benchmarks/bench_finetune.py --out benchmarks/results/finetune_cpu.json [--scratch]
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from _common import ROOT, finish, machine

from mscn_geo.data import scan_image_folder, stratified_split
from mscn_geo.evaluate import evaluate_folder
from mscn_geo.training import make_config, train

POOL = ROOT.parent / "shared" / "data" / "ucmerced"
GROUPS = {
    "residential": ["denseresidential", "mediumresidential", "sparseresidential", "mobilehomepark"],
    "vegetation": ["forest", "chaparral"],
    "water": ["beach", "river", "harbor"],
    "transport": ["freeway", "overpass", "runway", "intersection", "parkinglot"],
    "farmland": ["agricultural", "golfcourse", "baseballdiamond"],
}
PER_CLASS = 125


def build_folders(work: Path) -> tuple[Path, Path]:
    """Symlinked ImageFolders: fine-tune chips (bundled model's train part) and held-out."""
    classes, samples = scan_image_folder(POOL)
    train_idx, val_idx = stratified_split([s.label for s in samples], 0.2, 0)  # bundled split
    group_of = {c: g for g, members in GROUPS.items() for c in members}
    rng = random.Random(0)
    for name, idx in (("finetune", train_idx), ("heldout", val_idx)):
        by_group: dict[str, list[Path]] = {}
        for i in idx:
            group = group_of.get(classes[samples[i].label])
            if group:
                by_group.setdefault(group, []).append(samples[i].path)
        for group, paths in by_group.items():
            if name == "finetune":
                rng.shuffle(paths)
                paths = sorted(paths[:PER_CLASS])
            folder = work / name / group
            folder.mkdir(parents=True)
            for p in paths:
                os.symlink(p, folder / p.name)
    return work / "finetune", work / "heldout"


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run(name: str, values: dict[str, Any], data: Path, heldout: Path, work: Path) -> dict:
    cfg = make_config(values)
    t0, c0, load0 = time.time(), _cpu_s(), os.getloadavg()[0]
    summary = train(work / f"{name}.pt", cfg, data_dir=data)
    wall, cpu = time.time() - t0, _cpu_s() - c0
    report = evaluate_folder(heldout, work / f"{name}.pt", device="cpu")
    return {
        "config": {k: v for k, v in values.items()},
        "wall_s": round(wall, 1),
        "cpu_s": round(cpu, 1),
        "load_1min_before": round(load0, 2),
        "load_1min_after": round(os.getloadavg()[0], 2),
        "epochs": summary["epochs"],
        "train_chips": summary["train_chips"],
        "val_oa_selection": round(summary["best_val_overall_accuracy"], 4),
        "heldout_oa": round(report["overall_accuracy"], 4),
        "heldout_kappa": round(report["kappa"], 4),
        "heldout_images": report["n_images"],
        # train's record of the checkpoint's bf16 agreement (what --backend auto reads).
        "bf16_agreement": summary["mixed_precision"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path)
    ap.add_argument("--scratch", action="store_true", help="also train from scratch, same budget")
    args = ap.parse_args()
    if not POOL.is_dir():
        raise SystemExit(f"needs the shared UC Merced pool at {POOL}")
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    result: dict[str, Any] = {"machine": machine(torch.device("cpu")), "runs": {}}
    with tempfile.TemporaryDirectory(prefix="bench-finetune-") as tmp:
        work = Path(tmp)
        data, heldout = build_folders(work)
        base = {"device": "cpu"}
        result["runs"]["finetune_bundled"] = run(
            "finetune", {**base, "init": "bundled"}, data, heldout, work
        )
        if args.scratch:
            budget = result["runs"]["finetune_bundled"]["wall_s"] / 60
            result["runs"]["scratch_same_budget"] = run(
                "scratch",
                {**base, "epochs": 300, "time_budget_min": round(budget, 2), "batch_size": 32},
                data,
                heldout,
                work,
            )
    print(finish(result, args.out))


if __name__ == "__main__":
    main()
