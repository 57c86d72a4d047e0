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
