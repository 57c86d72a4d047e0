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
from mscn_geo.options import ClassifyOptions

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
# ClassifyOptions fields: default and help from mscn_geo.options.
OUT_DIR = from_field(ClassifyOptions, "out_dir", "--out", "-o", metavar="DIR", file_okay=False)
TILE_SIZE = from_field(ClassifyOptions, "tile_size", metavar="PIXELS", min=32)
STRIDE = from_field(ClassifyOptions, "stride", metavar="PIXELS", min=1)
OVERLAP_WEIGHT = from_field(ClassifyOptions, "overlap_weight", metavar="NAME")
TTA = from_field(ClassifyOptions, "tta")
MIN_CONFIDENCE = from_field(ClassifyOptions, "min_confidence", metavar="P")
PROBABILITIES = from_field(ClassifyOptions, "probabilities")
BANDS = from_field(ClassifyOptions, "bands", metavar="LIST")
SCALE = from_field(ClassifyOptions, "scale", metavar="MIN,MAX")
RESAMPLE = from_field(ClassifyOptions, "resample")
PAD = from_field(ClassifyOptions, "pad", "--pad/--no-pad")
ALLOW_NO_CRS = from_field(ClassifyOptions, "allow_no_crs")
BATCH_SIZE = from_field(ClassifyOptions, "batch_size", min=1)
DEVICE = from_field(ClassifyOptions, "device", metavar="NAME")
AMP = from_field(ClassifyOptions, "amp", "--amp/--no-amp", show_default=False)
BACKEND = from_field(ClassifyOptions, "backend", metavar="NAME")
WORKERS = from_field(ClassifyOptions, "workers", min=0)
OVERWRITE = from_field(ClassifyOptions, "overwrite")
RESUME = from_field(ClassifyOptions, "resume")
STAC = from_field(ClassifyOptions, "stac")
ASSETS = from_field(ClassifyOptions, "assets", metavar="KEYS")
AOI = from_field(ClassifyOptions, "aoi", metavar="FILE", dir_okay=False)
QUICKLOOK = from_field(ClassifyOptions, "quicklook", "--quicklook/--no-quicklook")

# The same options for commands with their own defaults (evaluate, train): help from the
# field, except --batch-size, whose field help names classify's defaults.
BatchSize = Annotated[
    int,
    typer.Option("--batch-size", help="Tiles per forward pass.", min=1, metavar="INTEGER"),
]
Device = Annotated[
    str, typer.Option("--device", help=help_of(ClassifyOptions, "device"), metavar="NAME")
]
Amp = Annotated[
    bool | None,
    typer.Option("--amp/--no-amp", help=help_of(ClassifyOptions, "amp"), show_default=False),
]
Overwrite = Annotated[bool, typer.Option("--overwrite", help=help_of(ClassifyOptions, "overwrite"))]
Json = Annotated[
    bool, typer.Option("--json", help="Print one JSON object per line on stdout instead.")
]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")]
# main() reads --debug from the command line before Typer sees it; the option is
# declared on commands only so that --help lists it.
Debug = Annotated[bool, typer.Option("--debug", help="Show tracebacks of errors.")]
SkipExisting = Annotated[
    bool, typer.Option("--skip-existing", help="Skip scenes whose outputs exist.")
]
KeepGoing = Annotated[
    bool,
    typer.Option(
        "--keep-going", help="Go on after a failing scene; the exit code is 2 if any failed."
    ),
]
