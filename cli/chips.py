"""``mscn-geo chips``: labelled training chips from polygons drawn over scenes."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from mscn_geo_cli import options as opt
from mscn_geo_cli.app import app


@app.command()
def chips(
    scenes: Annotated[
        list[str],
        typer.Argument(
            help="Scenes: files, glob patterns, folders (their .tif/.tiff/.vrt files), "
            "or - to read paths from stdin.",
            show_default=False,
        ),
    ],
    labels: Annotated[
        Path,
        typer.Option(
            "--labels",
            help="Polygon layer of your classes (GeoPackage, GeoJSON, Shapefile...), any CRS.",
            dir_okay=False,
            show_default=False,
        ),
    ],
    class_field: Annotated[
        str,
        typer.Option(
            "--class-field",
            help="Field of --labels naming each polygon's class (values become class names).",
            show_default=False,
        ),
    ],
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            "-o",
            help="Chip folder to create: one folder per class, chips.gpkg, chips.json.",
            file_okay=False,
            show_default=False,
        ),
    ],
    layer: Annotated[
        str | None,
        typer.Option("--layer", help="Layer of --labels (needed when it has several)."),
    ] = None,
    model: opt.ModelPath = None,
    tile_size: opt.TileSize = None,
    stride: opt.Stride = None,
    bands: opt.Bands = None,
    scale: opt.Scale = None,
    resample: opt.Resample = False,
    min_cover: Annotated[
        float,
        typer.Option(
            "--min-cover",
            help="Share of a window's valid pixels one class must cover to make a chip.",
        ),
    ] = 0.9,
    val_fraction: Annotated[
        float,
        typer.Option(
            "--val-fraction", help="Share of each class's chips for validation (0: none)."
        ),
    ] = 0.2,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the spatial split.")] = 0,
    block_tiles: Annotated[
        int,
        typer.Option(
            "--block-tiles",
            help="Edge of the spatial split's blocks, in tiles; a block is train or val whole.",
            min=1,
        ),
    ] = 2,
    min_chips: Annotated[
        int,
        typer.Option("--min-chips", help="Warn about classes with fewer chips.", min=0),
    ] = 20,
    workers: opt.Workers = 2,
    overwrite: Annotated[
        bool,
        typer.Option("--overwrite", help="Replace --out if it is a chip folder made before."),
    ] = False,
    json_out: opt.Json = False,
    quiet: opt.Quiet = False,
    debug: opt.Debug = False,
) -> None:
    """Cut chips for `mscn-geo train` from SCENES where --labels polygons cover a tile.

    Tiles are read exactly as classify reads them (--model's bands, tile size and
    pixel size; --tile-size, --stride, --bands, --scale, --resample as for
    classify). A tile becomes a chip of a class when that class's polygons cover
    at least --min-cover of its valid pixels. Chips are split into train and val
    by spatial blocks: no training chip overlaps a validation chip. The folder
    appears complete or not at all.
    """
    from mscn_geo.batch import expand_scenes, raise_on_signals
    from mscn_geo.chips import ChipOptions, make_chips
    from mscn_geo.models import read_checkpoint
    from mscn_geo.models.checkpoint import BUNDLED_MODEL, meta_from_dict
    from mscn_geo.predict import ClassifyOptions

    options = ChipOptions(
        labels=labels,
        class_field=class_field,
        out_dir=out,
        layer=layer,
        read=ClassifyOptions(
            tile_size=tile_size,
            stride=stride,
            bands=bands,
            scale=scale,
            resample=resample,
            workers=workers,
        ),
        min_cover=min_cover,
        val_fraction=val_fraction,
        seed=seed,
        block_tiles=block_tiles,
        min_chips=min_chips,
        overwrite=overwrite,
    )
    show_bar = not quiet and sys.stderr.isatty()
    with raise_on_signals():
        options.check()
        paths = expand_scenes(scenes, sys.stdin if "-" in scenes else None)
        meta = meta_from_dict(read_checkpoint(model or BUNDLED_MODEL).get("meta", {}))
        if show_bar:
            from tqdm import tqdm

            bars: dict[Path, tqdm] = {}

            def progress(scene: Path, done: int, total: int) -> None:
                bar = bars.get(scene)
                if bar is None:
                    for old in bars.values():
                        old.close()
                    bar = bars[scene] = tqdm(
                        total=total, desc=scene.name, unit="tile", file=sys.stderr, leave=False
                    )
                bar.update(done - bar.n)

            try:
                result = make_chips(paths, meta, options, progress)
            finally:
                for bar in bars.values():
                    bar.close()
        else:
            result = make_chips(paths, meta, options)
    summary = result.to_dict()
    if json_out:
        print(json.dumps(summary), flush=True)
    else:
        counts = ", ".join(
            f"{name} {c['train']}+{c['val']}" for name, c in summary["counts"].items()
        )
        print(
            f"{summary['chips']} chips of {len(summary['classes'])} classes from "
            f"{len(summary['scenes'])} scene(s) in {summary['seconds']:.1f} s "
            f"({summary['chips_per_s']:.1f} chips/s)\n"
            f"  per class (train+val): {counts}\n"
            f"  dropped at the split boundary: {summary['dropped_at_split']}\n"
            f"  chips:   {summary['outputs']['folder']}\n"
            f"  layer:   {summary['outputs']['gpkg']}",
            flush=True,
        )
    for warning in summary["warnings"]:
        print(f"mscn-geo: warning: {warning}", file=sys.stderr)
