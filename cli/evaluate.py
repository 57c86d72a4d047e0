"""``mscn-geo evaluate``: accuracy of a model on a labelled folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from mscn_geo_cli import options as opt
from mscn_geo_cli.app import app


@app.command()
def evaluate(
    data_dir: Annotated[
        Path, typer.Argument(help="Folder per class (named like the model's classes).")
    ],
    model: opt.ModelPath = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Folder for confusion_matrix.csv/.png.", file_okay=False),
    ] = None,
    split: Annotated[
        str, typer.Option("--split", help="all, or the train/val split the model was trained with.")
    ] = "all",
    val_fraction: Annotated[
        float | None, typer.Option("--val-fraction", help="Split fraction (default: the model's).")
    ] = None,
    seed: Annotated[
        int | None, typer.Option("--seed", help="Split seed (default: the model's).")
    ] = None,
    tta: Annotated[
        bool, typer.Option("--tta", help="Average the 8 flips/rotations of each image.")
    ] = False,
    batch_size: opt.BatchSize = 32,
    device: opt.Device = "auto",
    amp: opt.Amp = None,
    json_out: opt.Json = False,
    debug: opt.Debug = False,
) -> None:
    """Overall accuracy, mean per-class accuracy, kappa, per-class P/R/F1, confusion matrix."""
    from mscn_geo.evaluate import evaluate_folder

    result = evaluate_folder(
        data_dir,
        model,
        out,
        split=split,
        val_fraction=val_fraction,
        seed=seed,
        device=device,
        amp=amp,
        batch_size=batch_size,
        tta=tta,
    )
    if json_out:
        print(json.dumps(result))
        return
    print(f"{result['model']} on {result['data']} ({result['split']}, {result['n_images']} images)")
    print(f"  overall accuracy         {result['overall_accuracy']:.4f}")
    print(f"  mean per-class accuracy  {result['mean_per_class_accuracy']:.4f}")
    print(f"  Cohen's kappa            {result['kappa']:.4f}")
    width = max(len(c) for c in result["classes"])
    print(f"  {'class':<{width}}  precision  recall  f1      n")
    for name, m in result["per_class"].items():
        print(
            f"  {name:<{width}}  {m['precision']:.3f}      {m['recall']:.3f}   "
            f"{m['f1']:.3f}   {m['support']}"
        )
    for label, path in result.get("outputs", {}).items():
        print(f"  {label}: {path}")
