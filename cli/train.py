"""``mscn-geo train``: train a model on labelled chips (the authors' recipe)."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from mscn_geo_cli import options as opt
from mscn_geo_cli.app import app


def _opt(help_: str, *names: str):
    return typer.Option(*names, help=help_, show_default=True)


@app.command()
def train(
    data_dir: Annotated[
        Path | None,
        typer.Argument(
            help="Folder per class of images (png, jpg, webp, tif...).", show_default=False
        ),
    ] = None,
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            "-o",
            help="Best checkpoint; also <out>_last.pt, _log.jsonl, _curve.png, _config.yaml.",
        ),
    ] = Path("model.pt"),
    arch: Annotated[
        str, _opt("Architecture (see `mscn-geo info` of a model).", "--arch")
    ] = "mscn_resnet18",
    dataset: Annotated[
        str | None,
        _opt("torchgeo dataset already on disk: ucmerced, eurosat, resisc45.", "--dataset"),
    ] = None,
    root: Annotated[
        Path | None, _opt("Folder holding --dataset (never downloaded).", "--root")
    ] = None,
    val_dir: Annotated[
        Path | None, _opt("Validation folder (default: a stratified split).", "--val-dir")
    ] = None,
    val_fraction: Annotated[
        float | None, _opt("Share of each class kept for validation.", "--val-fraction")
    ] = None,
    config: Annotated[
        Path | None,
        _opt("YAML/TOML file of training options (command-line options win).", "--config"),
    ] = None,
    epochs: Annotated[int | None, _opt("Epochs (default 300).", "--epochs")] = None,
    time_budget_min: Annotated[
        float | None,
        _opt("Fit the epochs into this many minutes (measured on epoch 1).", "--time-budget-min"),
    ] = None,
    batch_size: Annotated[int | None, _opt("Batch size (default 64).", "--batch-size")] = None,
    lr: Annotated[float | None, _opt("Peak AdamW learning rate (default 2e-3).", "--lr")] = None,
    weight_decay: Annotated[
        float | None, _opt("AdamW weight decay (default 0.05).", "--weight-decay")
    ] = None,
    warmup_epochs: Annotated[
        int | None, _opt("Linear warm-up epochs (default 5).", "--warmup-epochs")
    ] = None,
    label_smoothing: Annotated[
        float | None, _opt("Label smoothing (default 0.1).", "--label-smoothing")
    ] = None,
    mixup: Annotated[float | None, _opt("MixUp alpha, 0 = off (default 0.8).", "--mixup")] = None,
    cutmix: Annotated[
        float | None, _opt("CutMix alpha, 0 = off (default 1.0).", "--cutmix")
    ] = None,
    randaugment: Annotated[
        int | None, _opt("RandAugment magnitude 0..30, 0 = off (default 9).", "--randaugment")
    ] = None,
    random_erasing: Annotated[
        float | None, _opt("Random erasing probability (default 0.25).", "--random-erasing")
    ] = None,
    ema_decay: Annotated[
        float | None, _opt("EMA of weights, 0 = off (default 0).", "--ema-decay")
    ] = None,
    input_size: Annotated[
        int | None,
        _opt("Training chip size in px = the model's tile size (default 256).", "--input-size"),
    ] = None,
    pixel_size: Annotated[
        float | None, _opt("Pixel size of the training chips in m (default 0.3).", "--pixel-size")
    ] = None,
    init_backbone: Annotated[
        Path | None,
        _opt(
            "Local ResNet weights (torchvision/timm/torchgeo/ours) for the backbone.",
            "--init-backbone",
        ),
    ] = None,
    seed: Annotated[int | None, _opt("Random seed (default 0).", "--seed")] = None,
    resume: Annotated[
        Path | None, _opt("Continue an interrupted run from its <out>_last.pt.", "--resume")
    ] = None,
    device: opt.Device = "auto",
    amp: opt.Amp = None,
    json_out: opt.Json = False,
    quiet: opt.Quiet = False,
    debug: opt.Debug = False,
) -> None:
    """Train a scene classifier on labelled chips; the best epoch on validation is kept."""
    from mscn_geo.train import TrainConfig
    from mscn_geo.train import train as run_training

    given = {
        "arch": arch,
        "val_fraction": val_fraction,
        "epochs": epochs,
        "time_budget_min": time_budget_min,
        "batch_size": batch_size,
        "lr": lr,
        "weight_decay": weight_decay,
        "warmup_epochs": warmup_epochs,
        "label_smoothing": label_smoothing,
        "mixup_alpha": mixup,
        "cutmix_alpha": cutmix,
        "randaugment_magnitude": randaugment,
        "random_erasing": random_erasing,
        "ema_decay": ema_decay,
        "input_size": input_size,
        "pixel_size_m": pixel_size,
        "init_backbone": str(init_backbone) if init_backbone else None,
        "seed": seed,
        "device": device,
        "amp": amp,
    }
    overrides = {k: v for k, v in given.items() if v is not None}
    cfg = TrainConfig.from_file(config, **overrides) if config else TrainConfig(**overrides)
    bar = None
    if not quiet and sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=cfg.epochs, unit="epoch", file=sys.stderr)

    def on_epoch(entry) -> None:
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{entry.train_loss:.3f}", val_oa=f"{entry.val_oa:.3f}")
        elif not quiet and not json_out:
            print(
                f"epoch {entry.epoch}: loss {entry.train_loss:.4f} val OA {entry.val_oa:.4f}",
                file=sys.stderr,
            )

    try:
        summary = run_training(
            out,
            cfg,
            data_dir=data_dir,
            val_dir=val_dir,
            dataset=dataset,
            root=root,
            resume=resume,
            on_epoch=on_epoch,
        )
    finally:
        if bar is not None:
            bar.close()
    if json_out:
        print(json.dumps({**summary, "config": dataclasses.asdict(cfg)}))
    else:
        print(
            f"best validation OA {summary['best_val_overall_accuracy']:.4f} "
            f"after {summary['epochs']} epochs in {summary['seconds']:.0f} s on {summary['device']}"
        )
        print(
            f"  best: {summary['checkpoint']}\n  last: {summary['last']}\n  log:  {summary['log']}"
        )
