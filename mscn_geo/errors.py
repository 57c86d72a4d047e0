"""Typed errors raised by the library.

The CLI turns every :class:`MscnGeoError` into one line on stderr and the
error's ``exit_code``; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import re


class MscnGeoError(Exception):
    """Base class of every error a user can cause (bad input, bad options).

    The message names options by their Python field names (``batch_size``,
    ``overwrite=True``) and ``fields`` lists the ones it names, so that the
    command line can print its own flags instead (``--batch-size``, ``--overwrite``).
    """

    exit_code: int = 2

    def __init__(self, message: str = "", *, field: str | tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.fields: tuple[str, ...] = (field,) if isinstance(field, str) else tuple(field)


class InputError(MscnGeoError):
    """The scene cannot be used: not a raster, corrupt, no CRS, wrong bands..."""


class CheckpointError(MscnGeoError):
    """The checkpoint is missing, corrupt, not ours or incompatible."""


class OutputError(MscnGeoError):
    """An output cannot be written: exists, folder not writable, disk full."""


class OptionError(MscnGeoError):
    """An option value is invalid or contradicts another one."""


class AoiError(MscnGeoError):
    """The area of interest cannot be read, has no CRS or does not overlap the scene."""


class DatasetError(MscnGeoError):
    """A training or evaluation dataset is missing, empty or mismatched."""


class Interrupted(MscnGeoError):
    """The run was stopped by SIGINT (exit 130) or SIGTERM (exit 143)."""

    def __init__(self, signum: int, journal: object | None = None) -> None:
        import signal

        name = signal.Signals(signum).name
        message = f"interrupted by {name}; no partial outputs were left"
        if journal is not None:
            message += (
                f"; the finished tiles are kept in the resume journal {journal}: run the "
                "same command again with resume=True to continue"
            )
        super().__init__(message, field="resume" if journal is not None else ())
        self.signum = signum
        self.journal = journal
        self.exit_code = 128 + signum


_NO_DETAIL = re.compile(r"\s*See previous exception for details\.?")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def explain(exc: BaseException, default: str = "unknown error", limit: int = 240) -> str:
    """What went wrong, in whole sentences: the first sentence of ``exc`` and of its causes.

    Libraries often say "Read failed. See previous exception for details." and
    keep the detail in the chained exception (rasterio), or write paragraphs
    (PyTorch): this keeps one sentence of each, never cut mid-word.
    """
    parts: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        text = _NO_DETAIL.sub("", _ANSI.sub("", " ".join(str(current).split())))
        sentence = re.split(r"(?<=[.!?])\s", text, maxsplit=1)[0].rstrip(".")
        if sentence and sentence not in parts and sentence.strip("'\"") != "":
            parts.append(sentence)
        current = current.__cause__ or current.__context__
    text = "; ".join(parts)
    if len(text) > limit:
        text = text[:limit].rsplit(" ", 1)[0] + " ..."
    return text or default
