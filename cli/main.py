"""Entry point of the ``mscn-geo`` console script: runs the app, turns errors into exit codes.

This is the one place where errors become output: a :class:`MscnGeoError` is one
``mscn-geo: error: ...`` line on stderr and its exit code (2); a usage error is
click's usage message and exit 2; Ctrl-C exits 130; anything else is a bug, one
line and exit 1. SIGINT/SIGTERM during ``classify`` exit 130/143 (see
:func:`mscn_geo.batch.raise_on_signals`). ``--debug`` anywhere on the command line adds
the traceback.
"""

from __future__ import annotations

import gc
import logging
import sys
import traceback
from collections.abc import Sequence
from typing import NoReturn

import typer
import typer.main
from mscn_geo_cli import chips, classify, evaluate, export, info, train  # noqa: F401  (register commands)
from mscn_geo_cli.app import app
from mscn_geo_cli.errors import cli_message

from mscn_geo.errors import MscnGeoError

PROG = "mscn-geo"


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``mscn-geo`` with ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    args = [a for a in args if a != "--debug"]
    if not debug:
        # GDAL reports problems it recovers from (and some it raises) through
        # rasterio's logger; unconfigured, Python would print them on stderr
        # next to our one-line error.
        logging.getLogger("rasterio").setLevel(logging.CRITICAL)
    try:
        result = app(args=args, prog_name=PROG, standalone_mode=False)
    except MscnGeoError as exc:
        if debug:
            traceback.print_exc()
        message = " ".join(cli_message(exc, _command(args)).split())  # always one line
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return exc.exit_code
    except typer.Exit as exc:
        return exc.exit_code
    except (KeyboardInterrupt, typer.Abort):
        if debug:
            traceback.print_exc()
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if _is_usage_error(exc):
            exc.show()  # click's usage line, "Try ... --help" and the error
            return exc.exit_code
        if debug:
            traceback.print_exc()
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        detail = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
        print(
            f"{PROG}: internal error: {detail} (run with --debug for the traceback)",
            file=sys.stderr,
        )
        return 1
    finally:
        sys.stdout.flush()
    return result if isinstance(result, int) else 0


def _is_usage_error(exc: Exception) -> bool:
    """A bad command line (unknown option, missing argument, bad value).

    Typer has no public base class for these across the versions we allow (click's
    ``ClickException`` up to 0.25, a vendored copy since): they are told apart by
    what they all offer, ``show()`` and an integer ``exit_code``.
    """
    return callable(getattr(exc, "show", None)) and isinstance(getattr(exc, "exit_code", None), int)


def _command(args: list[str]):
    """The click command ``args`` invokes (for its flag names), or the whole app."""
    group = typer.main.get_command(app)
    for arg in args:
        if not arg.startswith("-"):
            return getattr(group, "commands", {}).get(arg, group)
    return group


def run() -> NoReturn:
    """The console script: :func:`main` on ``sys.argv``, then exit with its code.

    Before exiting, every object is frozen out of the garbage collector: the
    interpreter's teardown otherwise collects across the ~100k objects torch
    creates, 0.5-0.7 s added to every command on the 2-core machine (``import
    torch`` alone: 0.48 s of teardown, 0.16 s frozen). Nothing needs that
    collection: outputs are closed and written by then, and exit handlers still
    run. Only the console script does this; :func:`main` called in-process
    (tests, other programs) leaves the collector alone.
    """
    code = main()
    gc.freeze()
    sys.exit(code)


if __name__ == "__main__":
    run()
