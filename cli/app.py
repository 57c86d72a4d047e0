"""The Typer application object; command modules register on it."""

from __future__ import annotations

from typing import Any

import typer
from typer.core import TyperCommand


class Command(TyperCommand):
    """A command whose ``--help`` reads like click's and rasterio's.

    Usage names arguments ``SCENES...`` (Typer writes ``{scenes}...``), arguments
    are listed by that name with their help, and flags show no metavar (Typer
    writes ``<bool>`` after each).
    """

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if param.param_type_name == "argument":
                name = _argument_name(param)
                pieces.append(name if param.required else f"[{name}]")
        return pieces

    def format_options(self, ctx: Any, formatter: Any) -> None:
        arguments, options = [], []
        for param in self.get_params(ctx):
            if param.param_type_name == "argument":
                if param.help:
                    arguments.append((_argument_name(param), param.help))
            elif param.param_type_name == "option":
                if getattr(param, "is_flag", False):
                    param.metavar = ""
                record = param.get_help_record(ctx)
                if record is not None:
                    options.append(record)
        for title, rows in (("Arguments", arguments), ("Options", options)):
            if rows:
                with formatter.section(title):
                    formatter.write_dl(rows)


def _argument_name(param: Any) -> str:
    name = param.metavar or param.name.upper()
    return f"{name}..." if param.nargs != 1 else name


class App(typer.Typer):
    """``typer.Typer`` whose commands are :class:`Command` unless told otherwise."""

    def command(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("cls", Command)
        return super().command(*args, **kwargs)


app = App(
    name="mscn-geo",
    help="Land-use maps from GeoTIFF scenes with an MSCN scene classifier.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Plain click-style help, like rasterio's ``rio``: no boxes, no type labels.
    rich_markup_mode=None,
)
