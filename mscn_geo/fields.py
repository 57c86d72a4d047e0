"""Dataclass fields that carry their own help text.

An options dataclass (:class:`~mscn_geo.options.ClassifyOptions`, the training
config) declares each field once, with its default and a one-line help; the
library's documentation and the command line's ``--help`` both read it from
there, so the two cannot drift apart.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, TypeVar

HELP = "help"  # the metadata key of a field's help text
T = TypeVar("T")


def option(
    default: Any = dataclasses.MISSING,
    *,
    help: str,
    default_factory: Callable[[], Any] | Any = dataclasses.MISSING,
) -> Any:
    """A :func:`dataclasses.field` with a help text (one sentence or two, no CLI words)."""
    return dataclasses.field(
        default=default, default_factory=default_factory, metadata={HELP: help}
    )


def field_of(owner: type, name: str) -> dataclasses.Field:
    """The field ``name`` of dataclass ``owner``; ``KeyError`` when it has none."""
    for f in dataclasses.fields(owner):
        if f.name == name:
            return f
    raise KeyError(f"{owner.__name__} has no field {name!r}")


def default_of(owner: type, name: str) -> Any:
    """The default value of field ``name`` of ``owner`` (its factory called)."""
    f = field_of(owner, name)
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    raise KeyError(f"{owner.__name__}.{name} has no default")


def help_of(owner: type, name: str) -> str:
    """The help text of field ``name`` of ``owner``."""
    return field_of(owner, name).metadata.get(HELP, "")


def documented(owner: type[T]) -> type[T]:
    """Class decorator: append an ``Attributes:`` section made of the fields' help texts."""
    lines = [
        f"        {f.name}: {f.metadata[HELP]}"
        for f in dataclasses.fields(owner)
        if HELP in f.metadata
    ]  # type: ignore[arg-type]
    if lines:
        owner.__doc__ = "\n\n".join(
            [(owner.__doc__ or "").rstrip(), "    Attributes:\n" + "\n".join(lines)]
        )
    return owner
