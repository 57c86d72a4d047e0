"""Library errors in command-line words: the fields an error names become flags.

The library says ``batch_size must be at least 1`` or ``pass overwrite=True``
(a Python user's words) and lists the fields it names in ``error.fields``; here
each becomes the option that sets it (``--batch-size``, ``--overwrite``). The
flags come from the commands' own option declarations: a command parameter is
named like the field it sets, so there is no second table to keep in step.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from mscn_geo.errors import MscnGeoError


def cli_message(error: MscnGeoError, command: Any | None = None) -> str:
    """``str(error)`` with the fields it names written as ``command``'s flags."""
    return cli_text(str(error), command, getattr(error, "fields", ()))


def cli_text(text: str, command: Any | None = None, fields: Sequence[str] = ()) -> str:
    """Library words in ``text`` as ``command``'s flags (an error's message, a warning).

    Settings of any of the command's options become flags: ``name=True`` the flag,
    ``name=False`` its negative form (``--no-pad``), ``name=VALUE`` ``--flag VALUE``.
    A bare field name becomes the flag only for ``fields`` (the ones an error says
    it names), so ordinary words elsewhere stay words.
    """
    flags = flags_by_field(command)
    for name, (flag, negative) in flags.items():

        def setting(match: re.Match[str], flag: str = flag, negative: str | None = negative) -> str:
            value = match.group(1)
            if value == "True":
                return flag
            if value == "False":
                return negative or f"no {flag}"
            return f"{flag} {value.strip(chr(39) + chr(34))}"

        text = re.sub(rf"(?<![-\w/.]){name}=('[^']*'|\"[^\"]*\"|[^\s,;:)]+)", setting, text)
        if name in fields:
            text = re.sub(rf"(?<![-\w/.]){name}(?![-\w/=])", flag, text)
    return text


def flags_by_field(command: Any | None = None) -> dict[str, tuple[str, str | None]]:
    """``{parameter name: (long flag, negative flag or None)}`` of ``command``'s options.

    ``command`` is a click command (``typer.main.get_command(app)`` or one of its
    subcommands); ``None``: every command of the ``mscn-geo`` app.
    """
    if command is None:
        import typer.main
        from mscn_geo_cli.app import app

        command = typer.main.get_command(app)
    commands = getattr(command, "commands", None)
    if commands:
        merged: dict[str, tuple[str, str | None]] = {}
        for sub in commands.values():
            merged.update(flags_by_field(sub))
        return merged
    flags = {}
    for param in command.params:
        if param.param_type_name != "option":
            continue
        long = [o for o in param.opts if o.startswith("--")] or list(param.opts)
        negative = [o for o in param.secondary_opts if o.startswith("--")]
        flags[param.name] = (long[0], negative[0] if negative else None)
    return flags
