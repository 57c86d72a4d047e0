"""The Typer application object; command modules register on it."""

import typer

app = typer.Typer(
    name="mscn-geo",
    help="Land-use maps from GeoTIFF scenes with an MSCN scene classifier.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
