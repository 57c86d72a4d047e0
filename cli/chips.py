"""``mscn-geo chips``: labelled training chips from polygons drawn over scenes."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from mscn_geo_cli import options as opt
from mscn_geo_cli.app import app
from mscn_geo_cli.errors import cli_text

from mscn_geo.chip_options import ChipOptions


@app.command()
def chips(
    scenes: Annotated[
        list[str],
        typer.Argument(
            metavar="SCENES",
            help="Scenes (local files): paths, glob patterns, folders (their .tif/.tiff/.vrt "
            "files), or - to read paths from stdin.",
            show_default=False,
        ),
    ],
    labels: Annotated[
        Path,
        typer.Option(
            "--labels",
            metavar="FILE",
            help="Polygon layer of your classes (GeoPackage, GeoJSON, Shapefile...), any CRS.",
            dir_okay=False,
            show_default=False,
        ),
    ],
    class_field: Annotated[
        str,
        typer.Option(
            "--class-field",
            metavar="NAME",
            help="Field of --labels naming each polygon's class (values become class names).",
            show_default=False,
        ),
    ],
    out_dir: Annotated[
        Path,
        typer.Option(
            "--out",
            "-o",
            metavar="DIR",
            help="Chip folder to create: one folder per class, chips.gpkg, chips.json.",
            file_okay=False,
            show_default=False,
        ),
    ],
    layer: str | None = opt.from_field(ChipOptions, "layer"),
    model: opt.ModelPath = None,
    tile_size: int | None = opt.TILE_SIZE,
    stride: int | None = opt.STRIDE,
    bands: str | None = opt.BANDS,
    scale: str | None = opt.SCALE,
    resample: bool = opt.RESAMPLE,
    min_cover: float = opt.from_field(ChipOptions, "min_cover"),
    val_fraction: float = opt.from_field(ChipOptions, "val_fraction"),
    seed: int = opt.from_field(ChipOptions, "seed"),
    block_tiles: int = opt.from_field(ChipOptions, "block_tiles", min=1),
    min_chips: int = opt.from_field(ChipOptions, "min_chips", min=0),
    workers: int | None = opt.WORKERS,
    overwrite: bool = opt.from_field(ChipOptions, "overwrite"),
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
    from mscn_geo.chips import make_chips
    from mscn_geo.models import read_checkpoint
    from mscn_geo.models.checkpoint import BUNDLED_MODEL, meta_from_dict
    from mscn_geo.options import ClassifyOptions

    options = ChipOptions(
        labels=labels,
        class_field=class_field,
        out_dir=out_dir,
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
        print(f"mscn-geo: warning: {cli_text(warning)}", file=sys.stderr)
