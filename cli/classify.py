"""``mscn-geo classify``: scenes in, GeoPackage + class raster per scene out."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from mscn_geo_cli import options as opt
from mscn_geo_cli.app import app


@app.command()
def classify(
    scenes: Annotated[
        list[Path], typer.Argument(help="GeoTIFF scene(s) to classify.", show_default=False)
    ],
    model: opt.ModelPath = None,
    out: opt.OutDir = Path("."),
    tile_size: opt.TileSize = None,
    stride: opt.Stride = None,
    bands: opt.Bands = None,
    batch_size: opt.BatchSize = 16,
    device: opt.Device = "auto",
    amp: opt.Amp = None,
    workers: opt.Workers = 2,
    overwrite: opt.Overwrite = False,
    json_out: opt.Json = False,
    quiet: opt.Quiet = False,
    debug: opt.Debug = False,
) -> None:
    """Classify each tile of each SCENE; write <scene>.gpkg and <scene>_classes.tif to --out.

    Scenes are done one after the other; the first error stops the run (outputs of
    scenes already done stay, the failing scene leaves nothing behind).
    """
    from tqdm import tqdm

    from mscn_geo.models import load_checkpoint
    from mscn_geo.predict import ClassifyOptions, check_scene_list, classify_scene

    options = ClassifyOptions(
        tile_size=tile_size,
        stride=stride,
        bands=bands,
        batch_size=batch_size,
        device=device,
        amp=amp,
        workers=workers,
        out_dir=out,
        overwrite=overwrite,
    )
    options.check()
    check_scene_list(scenes, out)
    loaded = load_checkpoint(model)
    show_bar = not quiet and sys.stderr.isatty()
    for scene in scenes:
        with tqdm(
            total=0,
            desc=scene.name,
            unit="tile",
            disable=not show_bar,
            file=sys.stderr,
            leave=False,
        ) as bar:

            def progress(done: int, total: int, bar: tqdm = bar) -> None:
                bar.total = total
                bar.update(done - bar.n)

            result = classify_scene(scene, loaded, options, progress=progress)
        if json_out:
            print(json.dumps(result.to_dict()), flush=True)
        else:
            _print_summary(result.to_dict())


def _print_summary(summary: dict) -> None:
    model = summary["model"]
    counts = {k: v for k, v in summary["per_class"].items() if v}
    top = ", ".join(f"{k} {v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))
    lines = [
        f"{summary['scene']}: {summary['classified']} of {summary['tiles']} tiles classified "
        f"({summary['skipped']} nodata skipped, {summary['padded']} padded) in "
        f"{summary['seconds']:.1f} s, {summary['tiles_per_s']:.1f} tiles/s on {summary['device']}"
        f" (AMP {summary['amp']})",
        f"  classes: {top or 'none'}",
        f"  tiles:   {summary['outputs']['gpkg']}",
        f"  raster:  {summary['outputs']['raster']}",
        f"  model:   {model['label']}",
    ]
    if not model["trained"]:
        lines.append("  NOTE: the model is an UNTRAINED placeholder: its classes are meaningless")
    print("\n".join(lines), flush=True)
    for warning in summary["warnings"]:
        print(f"mscn-geo: warning: {summary['scene']}: {warning}", file=sys.stderr)
