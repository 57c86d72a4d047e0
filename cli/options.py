"""Option definitions shared by the commands (``Annotated`` types for Typer)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

ModelPath = Annotated[
    Path | None,
    typer.Option(
        "--model",
        "-m",
        help="Model checkpoint (.pt). Default: the bundled model.",
        dir_okay=False,
        show_default=False,
    ),
]
OutDir = Annotated[
    Path,
    typer.Option(
        "--out", "-o", help="Folder for the outputs (created if missing).", file_okay=False
    ),
]
TileSize = Annotated[
    int | None,
    typer.Option(
        "--tile-size", help="Tile edge in pixels. Default: the model's tile size.", min=32
    ),
]
Stride = Annotated[
    int | None,
    typer.Option(
        "--stride",
        help="Step between tiles in pixels, at most the tile size. Default: the tile size.",
        min=1,
    ),
]
Bands = Annotated[
    str | None,
    typer.Option(
        "--bands",
        help="1-based scene bands in the model's band order, e.g. 1,2,3. "
        "Default: the first bands, or red/green/blue by colour interpretation.",
    ),
]
BatchSize = Annotated[int, typer.Option("--batch-size", help="Tiles per forward pass.", min=1)]
Device = Annotated[
    str, typer.Option("--device", help="auto (CUDA if available), cpu, cuda or cuda:N.")
]
Amp = Annotated[
    bool | None,
    typer.Option(
        "--amp/--no-amp",
        help="Mixed precision (bf16/fp16). Default: on with CUDA, off on CPU.",
        show_default=False,
    ),
]
Workers = Annotated[
    int, typer.Option("--workers", help="Threads reading tiles (0: no threads).", min=0)
]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace existing outputs.")]
Json = Annotated[
    bool, typer.Option("--json", help="Print one JSON object per line on stdout instead.")
]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")]
# main() reads --debug from the command line before Typer sees it; the option is
# declared on commands only so that --help lists it.
Debug = Annotated[bool, typer.Option("--debug", help="Show tracebacks of errors.")]
Scale = Annotated[
    str | None,
    typer.Option(
        "--scale",
        help="MIN,MAX: map scene values linearly to 0..255 (e.g. 0,4095 for 12-bit data). "
        "Default: 8-bit data as is; other data types a per-band 2-98 percentile stretch.",
        show_default=False,
    ),
]
AllowNoCrs = Annotated[
    bool,
    typer.Option(
        "--allow-no-crs", help="Classify a scene without CRS; outputs in pixel coordinates."
    ),
]
NoPad = Annotated[
    bool,
    typer.Option(
        "--no-pad", help="Refuse a scene smaller than one tile instead of padding the tile."
    ),
]
Resample = Annotated[
    bool,
    typer.Option(
        "--resample",
        help="Read tiles at the model's pixel size (when the scene's is far from it).",
    ),
]
Resume = Annotated[
    bool,
    typer.Option(
        "--resume",
        help="Keep finished tiles in a hidden journal next to the outputs and continue an "
        "interrupted run; scenes already done are skipped.",
    ),
]
SkipExisting = Annotated[
    bool, typer.Option("--skip-existing", help="Skip scenes whose outputs exist.")
]
KeepGoing = Annotated[
    bool,
    typer.Option(
        "--keep-going", help="Go on after a failing scene; the exit code is 2 if any failed."
    ),
]
