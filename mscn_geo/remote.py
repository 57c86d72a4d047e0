"""Remote scenes: ``http(s)://`` URLs, ``s3://`` paths and GDAL ``/vsi...`` paths.

GDAL's virtual file systems (``/vsicurl/``, ``/vsis3/``) read only the byte
ranges of the blocks a window needs, so classifying a corner of a cloud-
optimised GeoTIFF fetches that corner (plus the header), not the file.
rasterio turns ``https://...`` into ``/vsicurl/https://...`` and ``s3://b/k``
into ``/vsis3/b/k`` itself; credentials come from the usual environment
variables (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``,
``AWS_REGION``, ``AWS_NO_SIGN_REQUEST``, ``AWS_S3_ENDPOINT``, ``GDAL_HTTP_HEADERS``...).

A remote scene is kept as its string everywhere (``pathlib.Path`` would
collapse ``https://`` into ``https:/``). :func:`remote_access` sets bounded
network options for the duration of a run and turns GDAL's failures into one
clear :class:`~mscn_geo.errors.InputError` naming the HTTP status or network
error that ended the retries.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlsplit

from mscn_geo.errors import InputError

__all__ = [
    "GDAL_REMOTE_OPTIONS",
    "as_scene",
    "gdal_options",
    "is_remote",
    "remote_access",
    "scene_name",
    "scene_stem",
]

_URL_SCHEMES = ("http://", "https://", "s3://")
_VSI_NETWORK = ("/vsicurl", "/vsis3", "/vsigs", "/vsiaz", "/vsiadls", "/vsioss", "/vsiswift")

#: GDAL configuration for remote reads; a variable already set in the
#: environment wins. Retries back off (GDAL doubles the delay each time); a
#: connection that delivers less than 1 byte/s for 30 s is dropped.
GDAL_REMOTE_OPTIONS: dict[str, str] = {
    # Do not list the remote "folder" looking for sidecar files on open.
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    # Only raster files exist remotely: no probing for .aux.xml, .ovr, .msk...
    "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".tif,.tiff,.vrt,.jp2,.TIF,.TIFF,.VRT,.JP2",
    "GDAL_HTTP_MAX_RETRY": "3",
    "GDAL_HTTP_RETRY_DELAY": "0.5",
    "GDAL_HTTP_CONNECTTIMEOUT": "15",
    "GDAL_HTTP_TIMEOUT": "120",
    "GDAL_HTTP_LOW_SPEED_TIME": "30",
    "GDAL_HTTP_LOW_SPEED_LIMIT": "1",
    # Merge neighbouring block requests into one range request.
    "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
    "VSI_CACHE": "TRUE",
}

# GDAL's messages that say why a network read failed (it logs them as warnings
# before the read error, which only says "Read failed").
_NETWORK_MESSAGE = re.compile(
    r"(HTTP error code: \d+|response_code=\d+|HTTP response code: \d+|CURL error[^\n]*"
    r"|[Tt]imed? ?out[^\n]*|Could not (?:connect|resolve)[^\n]*)"
)


def is_remote(scene: str | os.PathLike[str]) -> bool:
    """True for ``http(s)://``, ``s3://`` and GDAL network ``/vsi...`` paths."""
    text = os.fspath(scene) if not isinstance(scene, str) else scene
    lower = text.lower()
    return lower.startswith(_URL_SCHEMES) or lower.startswith(_VSI_NETWORK)


def as_scene(scene: str | os.PathLike[str]) -> Path | str:
    """A scene as the library keeps it: ``Path`` for a local file, the string for a remote one."""
    if isinstance(scene, str) and is_remote(scene):
        return scene
    return Path(scene)


def _url_path(scene: str) -> str:
    text = scene
    if text.lower().startswith("/vsicurl?"):  # /vsicurl?...&url=<encoded>
        query = dict(p.split("=", 1) for p in text[len("/vsicurl?") :].split("&") if "=" in p)
        return urlsplit(unquote(query.get("url", ""))).path
    for prefix in _VSI_NETWORK:
        if text.lower().startswith(prefix + "/"):
            text = text[len(prefix) + 1 :]
            break
    return urlsplit(text).path if "://" in text else text


def scene_name(scene: str | os.PathLike[str]) -> str:
    """The scene's file name: ``https://h/a/b.tif?sig=x`` -> ``b.tif``."""
    if not is_remote(scene):
        return Path(scene).name
    return PurePosixPath(unquote(_url_path(os.fspath(scene)))).name


def scene_stem(scene: str | os.PathLike[str]) -> str:
    """The scene's file name without its extension: what output names start with."""
    if not is_remote(scene):
        return Path(scene).stem
    return PurePosixPath(scene_name(scene)).stem


def gdal_options() -> dict[str, str]:
    """:data:`GDAL_REMOTE_OPTIONS` less those the environment sets itself."""
    return {k: v for k, v in GDAL_REMOTE_OPTIONS.items() if k not in os.environ}


class _NetworkErrors(logging.Handler):
    """Keeps GDAL's last network complaint (logged by rasterio at warning level)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.last: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        match = _NETWORK_MESSAGE.search(record.getMessage())
        if match:
            self.last = match.group(1).strip().rstrip(".")


_recording = threading.Lock()


@contextlib.contextmanager
def _record_network_errors() -> Iterator[_NetworkErrors]:
    # GDAL's warnings reach Python through the "rasterio._err" logger; the CLI
    # silences "rasterio" (level CRITICAL), so the child logger is opened up for
    # the run and kept from propagating: the messages are recorded, not printed.
    logger = logging.getLogger("rasterio._err")
    handler = _NetworkErrors()
    with _recording:
        level, propagate = logger.level, logger.propagate
        logger.setLevel(logging.WARNING)
        logger.propagate = False
        logger.addHandler(handler)
    try:
        yield handler
    finally:
        with _recording:
            logger.removeHandler(handler)
            logger.setLevel(level)
            logger.propagate = propagate


def _option(name: str) -> float:
    try:
        return float(os.environ.get(name, GDAL_REMOTE_OPTIONS[name]))
    except ValueError:
        return float(GDAL_REMOTE_OPTIONS[name])


def _probe(scene: str) -> str | None:
    """Why an http(s) scene cannot be read, asked of the server once; ``None``: it answers."""
    import urllib.error
    import urllib.request

    url = scene[len("/vsicurl/") :] if scene.lower().startswith("/vsicurl/") else scene
    if not url.lower().startswith(("http://", "https://")):
        return None
    request = urllib.request.Request(url, headers={"Range": "bytes=0-0"})
    try:
        with urllib.request.urlopen(request, timeout=min(_option("GDAL_HTTP_TIMEOUT"), 30)):
            return None
    except urllib.error.HTTPError as exc:
        return f"HTTP error code: {exc.code}"
    except TimeoutError:
        return "timed out"
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return f"connection failed: {reason}"


def _explain(scene: str, cause: str) -> str:
    """One line for a network failure ``cause`` (a GDAL or probe message)."""
    retries = int(_option("GDAL_HTTP_MAX_RETRY"))
    status = re.search(r"(?:code:? ?|code=)(\d+)", cause)
    code = int(status.group(1)) if status else None  # 0: no HTTP answer at all
    if code == 404:
        return f"{scene}: not found on the server (HTTP 404)"
    if code in (401, 403):
        return (
            f"{scene}: access denied (HTTP {code}); check the credentials in the environment "
            "(AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_NO_SIGN_REQUEST=YES for public "
            "buckets, GDAL_HTTP_HEADERS) or the signed URL"
        )
    if code:
        return f"{scene}: the server answered HTTP {code} (after {retries} retries)"
    if code == 0 or "time" in cause.lower():
        return f"{scene}: the server did not answer in time (after {retries} retries)"
    return f"{scene}: cannot reach the server ({cause.rstrip(').')})"


@contextlib.contextmanager
def remote_access(scene: str | os.PathLike[str]) -> Iterator[None]:
    """Network options and clear errors for work on ``scene``; does nothing for a local file.

    Enter it in the thread that starts the work: GDAL options set from the main
    thread also apply to the reader threads it starts.

    Raises:
        InputError: the server could not be reached, answered an HTTP error or
            stalled (after GDAL's bounded retries), replacing GDAL's generic
            "Read failed" / "not a readable raster" message.
    """
    if not is_remote(scene):
        yield
        return
    import rasterio
    from rasterio.errors import RasterioError

    text = os.fspath(scene)
    with rasterio.Env(**gdal_options()), _record_network_errors() as errors:
        try:
            yield
        except (InputError, RasterioError) as exc:
            found = _NETWORK_MESSAGE.search(str(exc))
            # GDAL does not always say why (a failed first read looks like
            # "not a supported format"): ask the server once.
            cause = errors.last or (found.group(1) if found else None) or _probe(text)
            if cause is None:
                raise
            raise InputError(_explain(text, cause)) from exc
