"""Train the bundled default model and its ablation baseline on UC Merced.

Runs, side by side on one machine, the MSCN model (and a hedge variant) and
the same backbone without MSC/GCE (the ablation), with the same recipe and
time budget, then evaluates each on the held-out validation split (16 images
per class: ``--val-fraction 0.2``, seed 0).

    python scripts/train_default_model.py DATA_DIR OUT_DIR [--budget-min 7]

The same single run with the CLI:

    mscn-geo train DATA_DIR --arch mscn_resnet18 --out model.pt --val-fraction 0.2 \
        --epochs 600 --time-budget-min 7 --ema-decay 0.998
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RUNS = {
    "mscn": {"arch": "mscn_resnet18"},
    "mscn_lr1e-3": {"arch": "mscn_resnet18", "lr": 1e-3, "drop_rate": 0.2},
    "baseline": {"arch": "resnet18"},
}


def _run(name: str, overrides: dict, data: str, out: str, budget: float) -> None:
    import torch

    from mscn_geo.evaluate import evaluate_folder
    from mscn_geo.training import TrainConfig, train

    torch.set_num_threads(2)
    cfg = TrainConfig(
        epochs=600,
        time_budget_min=budget,
        ema_decay=0.998,
        val_fraction=0.2,
        seed=0,
        **overrides,
    )
    path = Path(out) / f"{name}.pt"
    summary = train(path, cfg, data_dir=Path(data))
    report = evaluate_folder(Path(data), path, Path(out) / f"{name}_eval", split="val")
    report_tta = evaluate_folder(Path(data), path, split="val", tta=True)
    summary.update(
        val=report,
        val_tta_overall_accuracy=report_tta["overall_accuracy"],
        val_tta_kappa=report_tta["kappa"],
    )
    (Path(out) / f"{name}_summary.json").write_text(json.dumps(summary, indent=1))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("data")
    ap.add_argument("out")
    ap.add_argument("--budget-min", type=float, default=7.0)
    ap.add_argument("--runs", default=",".join(RUNS))
    a = ap.parse_args()
    Path(a.out).mkdir(parents=True, exist_ok=True)
    ctx = mp.get_context("spawn")
    procs = [
        ctx.Process(target=_run, args=(n, RUNS[n], a.data, a.out, a.budget_min))
        for n in a.runs.split(",")
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    sys.exit(max(p.exitcode or 0 for p in procs))


if __name__ == "__main__":
    main()
