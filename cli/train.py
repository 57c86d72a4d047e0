"""``mscn-geo train``: train or fine-tune a model on labelled chips.

The training options are :class:`mscn_geo.training.TrainConfig`'s fields (flags,
help and defaults come from there); this module adds the data sources, the
output and the run controls.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from mscn_geo_cli import options as opt
from mscn_geo_cli.app import app

from mscn_geo.training import FINE_TUNE_DEFAULTS, TrainConfig

# Flags that differ from the field names (kept from earlier releases).
_FLAGS = {
    "mixup_alpha": "--mixup",
    "cutmix_alpha": "--cutmix",
    "randaugment_magnitude": "--randaugment",
    "pixel_size_m": "--pixel-size",
}
_FINE_TUNE_NOTES = {name: f"with --init: {value}" for name, value in FINE_TUNE_DEFAULTS.items()}


@app.command()
@opt.dataclass_options(TrainConfig, flags=_FLAGS, notes=_FINE_TUNE_NOTES)
def train(
    data_dir: Annotated[
        Path | None,
        typer.Argument(
            help="Folder per class of chips (png, jpg, webp, tif...), e.g. made by "
            "`mscn-geo chips` (its chips.json split and band/scaling/pixel-size record are used).",
            show_default=False,
        ),
    ] = None,
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            "-o",
            metavar="PATH",
            help="Best checkpoint; also <out>_last.pt, _log.jsonl, _curve.png, _config.yaml.",
        ),
    ] = Path("model.pt"),
    dataset: Annotated[
        str | None,
        typer.Option(
            "--dataset",
            metavar="NAME",
            help="torchgeo dataset already on disk: ucmerced, eurosat, resisc45.",
        ),
    ] = None,
    root: Annotated[
        Path | None,
        typer.Option("--root", metavar="DIR", help="Folder holding --dataset (never downloaded)."),
    ] = None,
    val_dir: Annotated[
        Path | None,
        typer.Option(
            "--val-dir", metavar="DIR", help="Validation folder (default: a stratified split)."
        ),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            metavar="FILE",
            help="YAML/TOML file of training options (command-line options win).",
        ),
    ] = None,
    resume: Annotated[
        Path | None,
        typer.Option(
            "--resume",
            metavar="PATH",
            help="Continue an interrupted run from its <out>_last.pt, with its options; "
            "only --epochs, --time-budget-min, --device, --amp, --channels-last and "
            "--last-every-min may change.",
        ),
    ] = None,
    overwrite: opt.Overwrite = False,
    json_out: opt.Json = False,
    quiet: opt.Quiet = False,
    debug: opt.Debug = False,
    given: dict[str, Any] | None = None,
) -> None:
    """Train a scene classifier on labelled chips, or fine-tune one (--init); the best epoch on
    validation is kept."""
    from mscn_geo.training import config_for_resume, make_config
    from mscn_geo.training import train as run_training

    given = dict(given or {})
    if resume is not None:
        from mscn_geo.models import read_checkpoint

        file_values = {}
        if config is not None:
            from mscn_geo.training.config import read_config_file

            file_values = read_config_file(config)
        stored = read_checkpoint(resume).get("train_state", {}).get("config", {})
        cfg = config_for_resume(stored, {**file_values, **given})
    else:
        cfg = make_config(given, config)
    bar = None
    if not quiet and sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=cfg.epochs, unit="epoch", file=sys.stderr)

    def on_epoch(entry) -> None:
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{entry.train_loss:.3f}", val_oa=f"{entry.val_oa:.3f}")
        elif not quiet:
            print(
                f"epoch {entry.epoch}: loss {entry.train_loss:.4f} val OA {entry.val_oa:.4f}",
                file=sys.stderr,
            )

    def on_warning(message: str) -> None:
        print(f"mscn-geo: warning: {message}", file=sys.stderr)

    try:
        summary = run_training(
            out,
            cfg,
            data_dir=data_dir,
            val_dir=val_dir,
            dataset=dataset,
            root=root,
            resume=resume,
            overwrite=overwrite,
            on_epoch=on_epoch,
            on_warning=on_warning,
        )
    finally:
        if bar is not None:
            bar.close()
    if json_out:
        import dataclasses

        print(json.dumps({**summary, "config": dataclasses.asdict(cfg)}))
        return
    print(
        f"best validation OA {summary['best_val_overall_accuracy']:.4f} "
        f"after {summary['epochs']} epochs in {summary['seconds']:.0f} s on {summary['device']}"
        " (chosen on that split: optimistic; `mscn-geo evaluate` on held-out chips)"
    )
    print(f"  best: {summary['checkpoint']}\n  last: {summary['last']}\n  log:  {summary['log']}")
    mixed = summary["mixed_precision"]
    if mixed is None:
        # No forward_mixed, or bf16 would be emulated on this device.
        print("  bf16 agreement: not measured (classify runs it in float32 by default)")
    else:
        verdict = "passes: bf16 on CPUs with native bf16" if mixed["passes"] else "fails: float32"
        print(
            f"  bf16 agreement: same class {100 * mixed['same_class']:.1f} %, "
            f"max |dp| {mixed['max_abs_dp']:.4f} on {mixed['images']} images ({verdict})"
        )
