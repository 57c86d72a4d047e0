"""Options shared by the commands, declared once (like rasterio's ``rio`` option module).

Options that set a field of a library dataclass (``ClassifyOptions``, the
training config) are made by :func:`from_field`: their default and help come
from the field, so ``--help`` and the library cannot drift apart. A command
declares ``tile_size: int | None = opt.TILE_SIZE`` and builds the dataclass
from its parameters with :func:`dataclass_from`; the parameter is named like
the field. Options the library does not know (``--json``, ``--quiet``) are
plain ``Annotated`` types below.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from mscn_geo.fields import default_of, help_of

T = TypeVar("T")

#: Metavars by Python type, as click names them (rasterio's help reads the same).
_METAVARS = {int: "INTEGER", float: "FLOAT", str: "TEXT", Path: "PATH"}


def from_field(
    owner: type,
    name: str,
    *flags: str,
    metavar: str | None = None,
    given_only: bool = False,
    note: str = "",
    **kwargs: Any,
) -> Any:
    """A Typer option (used as a parameter's default) for field ``name`` of ``owner``.

    Args:
        flags: option names; default ``--name-with-dashes``. A boolean field that
            defaults to ``True`` needs ``"--x/--no-x"``.
        metavar: the value's name in ``--help``; default from the field's type
            (``INTEGER``, ``FLOAT``, ``TEXT``, ``PATH``). Flags show none.
        given_only: the option's value is ``None`` unless given on the command
            line (to merge it with a config file); ``--help`` still shows the
            field's default.
        note: text shown after the default (e.g. another default in some mode).
        kwargs: passed to :func:`typer.Option` (``min``, ``file_okay``, ...).
    """
    default = default_of(owner, name)
    flags = flags or (f"--{name.replace('_', '-')}",)
    kind = _value_type(owner, name)
    if metavar is None and kind is not bool:
        metavar = _METAVARS.get(kind, "VALUE")
    text = help_of(owner, name)
    if given_only:
        shown = [] if default is None else [f"default: {default}"]
        shown += [note] if note else []
        if shown:
            text = f"{text}  [{'; '.join(shown)}]"
        default, kwargs["show_default"] = None, False
    return typer.Option(default, *flags, help=text, metavar=metavar, **kwargs)


def dataclass_from(owner: type[T], params: Mapping[str, Any], **extra: Any) -> T:
    """``owner(**fields)`` from a command's parameters (``ctx.params``) named like its fields.

    Parameters that are no field of ``owner`` are ignored; ``extra`` overrides.
    """
    names = {f.name for f in dataclasses.fields(owner)}  # type: ignore[arg-type]
    values = {k: v for k, v in params.items() if k in names}
    return owner(**{**values, **extra})


def dataclass_options(
    owner: type,
    flags: Mapping[str, str] | None = None,
    notes: Mapping[str, str] | None = None,
    exclude: Iterable[str] = (),
    param: str = "given",
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: one option per field of dataclass ``owner`` (:func:`from_field`, given only).

    For commands that take (nearly) every field, such as ``train``: instead of a
    parameter per field, the command declares ``param`` (a dict) and receives
    ``{field: value}`` for the options given on the command line only, to merge
    with a config file. ``flags`` renames options (``{"mixup_alpha": "--mixup"}``);
    fields with ``metadata["cli"] == False`` and those in ``exclude`` get none.
    """
    flags, notes, skip = dict(flags or {}), dict(notes or {}), set(exclude)
    fields = [
        f
        for f in dataclasses.fields(owner)  # type: ignore[arg-type]
        if f.name not in skip and f.metadata.get("cli", True)
    ]

    def option_for(f: dataclasses.Field) -> Any:
        flag = flags.get(f.name, "--" + f.name.replace("_", "-"))
        kind = _value_type(owner, f.name)
        if kind is bool:
            flag = f"{flag}/--no-{flag.removeprefix('--')}"
        return from_field(owner, f.name, flag, given_only=True, note=notes.get(f.name, ""))

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        signature = inspect.signature(func, eval_str=True)
        own = [
            p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
            for p in signature.parameters.values()
            if p.name != param
        ]
        added = [
            inspect.Parameter(
                f.name,
                inspect.Parameter.KEYWORD_ONLY,
                default=option_for(f),
                annotation=_value_type(owner, f.name) | None,
            )
            for f in fields
        ]
        names = {f.name for f in fields}

        @functools.wraps(func)
        def command(**kwargs: Any) -> Any:
            given = {k: kwargs.pop(k) for k in names}
            return func(**kwargs, **{param: {k: v for k, v in given.items() if v is not None}})

        params = own + added
        command.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in params}
        return command

    return decorate


def _value_type(owner: type, name: str) -> Any:
    """The field's type without ``None`` (``int | None`` -> ``int``); a union stays."""
    hint = typing.get_type_hints(owner)[name]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0] if len(args) == 1 else hint
    return hint


ModelPath = Annotated[
    Path | None,
    typer.Option(
        "--model",
        "-m",
        metavar="PATH",
        help="Model checkpoint (.pt). Default: the bundled model.",
        dir_okay=False,
        show_default=False,
    ),
]
OutDir = Annotated[
    Path,
    typer.Option(
        "--out",
        "-o",
        help="Folder for the outputs (created if missing).",
        file_okay=False,
        metavar="DIR",
    ),
]
TileSize = Annotated[
    int | None,
    typer.Option(
        "--tile-size",
        help="Tile edge in pixels. Default: the model's tile size.",
        min=32,
        metavar="PIXELS",
    ),
]
Stride = Annotated[
    int | None,
    typer.Option(
        "--stride",
        metavar="PIXELS",
        help="Step between tiles in pixels, at most the tile size. Default: the tile size.",
        min=1,
    ),
]
Bands = Annotated[
    str | None,
    typer.Option(
        "--bands",
        metavar="LIST",
        help="1-based scene bands in the model's band order, e.g. 1,2,3. "
        "Default: the first bands, or red/green/blue by colour interpretation.",
    ),
]
BatchSize = Annotated[
    int, typer.Option("--batch-size", help="Tiles per forward pass.", min=1, metavar="INTEGER")
]
Device = Annotated[
    str,
    typer.Option("--device", help="auto (CUDA if available), cpu, cuda or cuda:N.", metavar="NAME"),
]
Amp = Annotated[
    bool | None,
    typer.Option(
        "--amp/--no-amp",
        help="Mixed precision (bf16/fp16). Default: on with CUDA, off on CPU.",
        show_default=False,
    ),
]
Backend = Annotated[
    str,
    typer.Option(
        "--backend",
        help="What runs the model: auto (ONNX Runtime for fp32 on CPU, else PyTorch), "
        "torch or onnxruntime.",
        metavar="NAME",
    ),
]
Workers = Annotated[
    int,
    typer.Option(
        "--workers", help="Threads reading tiles (0: no threads).", min=0, metavar="INTEGER"
    ),
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
        metavar="MIN,MAX",
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
Stac = Annotated[
    bool,
    typer.Option(
        "--stac",
        help="Also write <scene>.stac.json: a STAC Item of the outputs (footprint in "
        "EPSG:4326, projection and classification extensions, assets with roles).",
    ),
]
Assets = Annotated[
    str | None,
    typer.Option(
        "--assets",
        metavar="KEYS",
        help="For a STAC Item scene: comma-separated asset keys to read as the model's bands, "
        "in order (e.g. red,green,blue or B04,B03,B02). Default: its visual asset.",
    ),
]
Aoi = Annotated[
    Path | None,
    typer.Option(
        "--aoi",
        metavar="FILE",
        help="Area of interest: polygons in a GeoPackage, GeoJSON or Shapefile (any CRS). "
        "Only tiles touching it are classified; every output is nodata outside it and "
        "areas count only inside it.",
        dir_okay=False,
        show_default=False,
    ),
]
NoQuicklook = Annotated[
    bool,
    typer.Option("--no-quicklook", help="Do not write <scene>_quicklook.png."),
]
