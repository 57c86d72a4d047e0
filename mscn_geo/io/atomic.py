"""All-or-nothing output files.

Every output of a scene is first written under a hidden temporary name in the
destination folder (same filesystem, so the final ``os.replace`` is a rename)
and only renamed to its final name once all of them are complete. Readers and
glob patterns such as ``*.gpkg`` never see a half-written file, and a failure
leaves the folder as it was.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from mscn_geo.errors import MscnGeoError, OutputError

__all__ = [
    "PAM_SUFFIX",
    "atomic_file",
    "atomic_folder",
    "atomic_outputs",
    "check_destination",
    "claim_outputs",
    "output_paths",
    "remove_stale_temporaries",
    "style_sidecar",
    "temporary_path",
]

#: The hidden lock file of an output set claimed by a run (:func:`claim_outputs`).
LOCK_SUFFIX = ".mscn-lock"
#: GDAL's "persistent auxiliary metadata" sidecar, e.g. ``scene_classes.tif.aux.xml``.
PAM_SUFFIX = ".aux.xml"

# Files GDAL/SQLite may create next to a dataset while it is open.
_TRANSIENT_SUFFIXES = ("-journal", "-wal", "-shm")
# Files GDAL keeps next to a raster; they describe its content, so they travel with it.
_GDAL_SIDECARS = (PAM_SUFFIX, ".ovr", ".msk")
_RASTER_SUFFIXES = (".tif", ".tiff")

_DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
# GDAL and SQLite report a full disk as text, without an errno.
_DISK_FULL_MESSAGES = ("no space left on device", "disk quota exceeded", "database or disk is full")
# Below this much free space a failed write is most likely a full disk.
_LOW_SPACE_BYTES = 1 << 20


def style_sidecar(path: Path) -> Path:
    """The QGIS style file QGIS loads by default for the file ``path`` (``x.tif`` -> ``x.qml``)."""
    return Path(path).with_suffix(".qml")


def output_paths(
    scene: Path | str, out_dir: Path, *, quicklook: bool = False, probabilities: bool = False
) -> dict[str, Path]:
    """Final output paths for one scene.

    Returns ``{'gpkg': out/<stem>.gpkg, 'raster': out/<stem>_classes.tif,
    'aux': out/<stem>_classes.tif.aux.xml, 'qml': out/<stem>_classes.qml,
    'areas': out/<stem>_areas.csv}`` and with ``quicklook``
    ``'quicklook': out/<stem>_quicklook.png``, with ``probabilities``
    ``'probs': out/<stem>_probs.tif``. The two sidecars belong to the
    class raster: ``aux`` holds its category names (GeoTIFF cannot embed them),
    ``qml`` its QGIS style (a legend with exactly the classes).
    :class:`~mscn_geo.io.raster.ClassRasterWriter` writes both next to the
    raster's temporary, at the temporaries :func:`atomic_outputs` gives for them.
    """
    from mscn_geo.remote import scene_stem

    stem = scene_stem(scene)  # a URL's file name for a remote scene
    out_dir = Path(out_dir)
    raster = out_dir / f"{stem}_classes.tif"
    paths = {
        "gpkg": out_dir / f"{stem}.gpkg",
        "raster": raster,
        "aux": raster.with_name(raster.name + PAM_SUFFIX),
        "qml": style_sidecar(raster),
        "areas": out_dir / f"{stem}_areas.csv",
    }
    if probabilities:
        paths["probs"] = out_dir / f"{stem}_probs.tif"
    if quicklook:
        paths["quicklook"] = out_dir / f"{stem}_quicklook.png"
    return paths


def temporary_path(final: Path) -> Path:
    """Hidden temporary name for ``final`` in the same folder.

    The extension is kept so GDAL picks the right driver
    (``scene.gpkg`` -> ``.scene.<pid>.partial.gpkg``). A GDAL sidecar maps onto the
    sidecar of its dataset's temporary (``x.tif.aux.xml`` -> ``.x.<pid>.partial.tif.aux.xml``),
    so a writer that creates the sidecar next to the temporary dataset creates exactly it.
    """
    final = Path(final)
    if final.name.endswith(PAM_SUFFIX) and len(final.name) > len(PAM_SUFFIX):
        base = temporary_path(final.with_name(final.name[: -len(PAM_SUFFIX)]))
        return base.with_name(base.name + PAM_SUFFIX)
    return final.with_name(f".{final.stem}.{os.getpid()}.partial{final.suffix}")


def _sidecars(path: Path) -> list[Path]:
    """Files that belong to the dataset ``path`` and must follow it."""
    sidecars = [path.with_name(path.name + suffix) for suffix in _GDAL_SIDECARS]
    if path.suffix.lower() in _RASTER_SUFFIXES:
        sidecars.append(style_sidecar(path))
    return sidecars


def _side_files(path: Path) -> list[Path]:
    transient = [path.with_name(path.name + suffix) for suffix in _TRANSIENT_SUFFIXES]
    return transient + _sidecars(path)


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


def _check_folders(finals: Sequence[Path]) -> None:
    for folder in dict.fromkeys(path.parent for path in finals):
        if not folder.exists():
            raise OutputError(f"output folder {folder} does not exist")
        if not folder.is_dir():
            raise OutputError(f"output folder {folder} is not a folder")
        reason = _cannot_create_in(folder)
        if reason:
            raise OutputError(f"output folder {folder} is not writable ({reason})")


def check_destination(finals: Sequence[Path], overwrite: bool) -> None:
    """Refuse to write ``finals``: a missing or unwritable folder, or (without
    ``overwrite``) a final or a sidecar of it that exists.

    Raises:
        OutputError: ``"<path> exists; use overwrite=True"`` and folder problems.
    """
    _check_folders(finals)
    if overwrite:
        for final in finals:
            if final.is_dir():
                raise OutputError(f"{final} is a folder; cannot overwrite it")
        return
    for final in finals:
        # A sidecar left from an earlier run belongs to that run's output too.
        for existing in (final, *_sidecars(final)):
            if existing.exists() or existing.is_symlink():
                raise OutputError(f"{existing} exists; use overwrite=True", field="overwrite")


def _cannot_create_in(folder: Path) -> str | None:
    """Why no file can be created in ``folder`` (``None``: one can).

    A real attempt, not ``os.access``: root passes ``os.access`` on a read-only
    mount or in ``/sys``, and would learn it only when the first output fails.
    """
    try:
        fd, name = tempfile.mkstemp(prefix=".mscn-geo-probe.", dir=folder)
    except OSError as exc:
        return exc.strerror or type(exc).__name__
    os.close(fd)
    os.unlink(name)
    return None


# A temporary of :func:`temporary_path`: ``.<stem>.<pid>.partial[.<ext>...]``.
_TEMPORARY = re.compile(r"^\.(?P<stem>.+)\.(?P<pid>\d+)\.partial(?:\..*)?$")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Remove the hidden temporaries in ``folder`` left by killed runs (their pid is gone).

    A run killed with SIGKILL cannot clean up; its temporaries
    (``.<stem>.<pid>.partial.<ext>`` and side files) would stay forever. Any
    run into the folder removes them, whatever scene it writes. Liveness is
    checked on this machine: a folder shared between machines must not be
    written by runs on two of them at once.
    """
    folder = Path(folder)
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for entry in folder.iterdir():
        match = _TEMPORARY.match(entry.name)
        if match and not _pid_alive(int(match["pid"])) and not entry.is_dir():
            with contextlib.suppress(OSError):
                entry.unlink()
                removed.append(entry)
    return removed


def _lock_path(finals: Sequence[Path]) -> Path:
    first = Path(finals[0])
    return first.with_name(f".{first.stem}{LOCK_SUFFIX}")


@contextlib.contextmanager
def claim_outputs(finals: Sequence[Path]) -> Iterator[None]:
    """Hold the output set ``finals`` for this run, exclusively, for the ``with`` block.

    Two runs writing the same outputs at once would each replace the other's
    files, and could leave the GeoPackage of one beside the raster of the other.
    The claim is an advisory ``flock`` on the hidden ``.<stem>.mscn-lock`` next to
    the first output; the kernel drops it when its process dies (even by SIGKILL),
    so a killed run never leaves the set claimed. The file is removed on exit.

    Raises:
        OutputError: another live run holds the set.
    """
    try:
        import fcntl
    except ImportError:  # no flock (Windows): no claim
        yield
        return
    path = _lock_path(finals)
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        except OSError as exc:
            # The first file a run creates there: the folder's own check's words.
            raise OutputError(
                f"output folder {path.parent} is not writable ({exc.strerror})"
            ) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise OutputError(
                f"{finals[0]} is being written by another run (pid {holder}); wait for it "
                "to finish (then its outputs exist: pass overwrite=True to replace them)",
                field="overwrite",
            ) from None
        # The holder we waited for may have removed the file: lock the current one.
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        with contextlib.suppress(OSError):
            path.unlink()
        os.close(fd)  # releases the lock, after the file is gone


def _is_disk_full(exc: BaseException, folder: Path) -> bool:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in _DISK_FULL_ERRNOS:
            return True
        if any(message in str(current).lower() for message in _DISK_FULL_MESSAGES):
            return True
        current = current.__cause__ or current.__context__
    if isinstance(exc, MscnGeoError | KeyboardInterrupt | SystemExit):
        return False
    try:
        return shutil.disk_usage(folder).free < _LOW_SPACE_BYTES
    except OSError:
        return False


def _fsync(path: Path) -> None:
    # Data must be on disk before the rename makes it visible, or a crash right
    # after could leave a complete-looking but empty file.
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) if path.is_dir() else os.O_RDONLY
    with contextlib.suppress(OSError):
        fd = os.open(path, flags)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_file(final: str | os.PathLike[str]) -> Iterator[Path]:
    """Write one file so that it is complete or absent: ``with atomic_file(p) as tmp:``.

    The block writes the hidden temporary ``tmp`` (same folder, extension kept,
    see :func:`temporary_path`); on normal exit it is flushed to disk (fsync),
    renamed over ``final`` and the folder entry flushed too, so a crash at any
    moment leaves the old file or the new one, never a torn one. On an exception
    the temporary is removed and ``final`` is untouched.
    """
    final = Path(final)
    temp = temporary_path(final)
    try:
        yield temp
        _fsync(temp)
        os.replace(temp, final)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
    _fsync(final.parent)


@contextlib.contextmanager
def atomic_outputs(finals: Sequence[Path], overwrite: bool = False) -> Iterator[list[Path]]:
    """Write several output files so they appear together or not at all.

    Yields one temporary path per final path (same folder, hidden name keeping
    the extension, see :func:`temporary_path`); the block writes them. On normal
    exit every temporary is renamed to its final path (``os.replace``); GDAL
    sidecars of a temporary (``.aux.xml``, ``.ovr``) follow it even when not listed.
    On an exception every temporary and its GDAL/SQLite side files are removed
    and the exception is re-raised; no final file is created or replaced.

    Raises:
        OutputError: before anything is written if a final (or a sidecar of it)
            exists and not ``overwrite`` ("... exists; use overwrite=True"), or a
            folder is missing or not writable; during the block, a full disk or
            exceeded quota becomes ``OutputError('disk full while writing ...')``;
            after it, a listed temporary the block did not create.
    """
    finals = [Path(final) for final in finals]
    if len(set(finals)) != len(finals):
        raise ValueError(f"duplicate output paths: {finals}")
    check_destination(finals, overwrite)
    temps = [temporary_path(final) for final in finals]

    def cleanup() -> None:
        for temp in temps:
            for path in (temp, *_side_files(temp)):
                _remove(path)

    cleanup()  # leftovers of a killed run that had the same pid
    try:
        yield list(temps)
        missing = [final for final, temp in zip(finals, temps, strict=True) if not temp.exists()]
        if missing:
            raise OutputError(f"internal error: {', '.join(map(str, missing))} was not written")
        for temp in temps:
            _fsync(temp)
    except BaseException as exc:
        disk_full = _is_disk_full(exc, finals[0].parent) if finals else False
        cleanup()
        if disk_full:
            where = ", ".join(str(final) for final in finals)
            raise OutputError(f"disk full while writing {where}") from exc
        raise

    listed = set(temps) | set(finals)
    for final, temp in zip(finals, temps, strict=True):
        os.replace(temp, final)
        # A sidecar written for the temporary goes with it even when not listed; a
        # stale GDAL sidecar of the replaced final would describe the old file.
        for temp_side, final_side in zip(_sidecars(temp), _sidecars(final), strict=True):
            if temp_side in listed or final_side in listed:
                continue
            if temp_side.exists():
                os.replace(temp_side, final_side)
            elif final_side.name.endswith(_GDAL_SIDECARS):
                _remove(final_side)
    for folder in dict.fromkeys(final.parent for final in finals):
        _fsync(folder)


def _remove_stale_folders(final: Path) -> None:
    """Remove temporary folders of ``final`` left by killed runs (their pid is gone)."""
    for entry in final.parent.glob(f".{final.stem}.*.partial*"):
        match = _TEMPORARY.match(entry.name)
        if match and match["stem"] == final.stem and not _pid_alive(int(match["pid"])):
            with contextlib.suppress(OSError):
                _remove(entry)


def _replaceable(folder: Path, marker: str | None) -> bool:
    if not any(folder.iterdir()):
        return True
    return marker is not None and (folder / marker).is_file()


@contextlib.contextmanager
def atomic_folder(
    final: Path, overwrite: bool = False, marker: str | None = None
) -> Iterator[Path]:
    """Write a whole output folder so it appears complete or not at all.

    Yields a hidden temporary folder next to ``final`` (``.<name>.<pid>.partial``);
    the block fills it. On normal exit its files are fsynced and it is renamed
    to ``final``; on an exception (Ctrl-C included) it is removed and the
    exception re-raised, leaving ``final`` as it was.

    With ``overwrite`` an existing ``final`` is replaced only when it is empty
    or holds ``marker`` (a file only our own output has), so a mistyped
    ``--out`` never deletes somebody's folder; the old folder is moved aside
    before the new one is renamed in and deleted after.

    Raises:
        OutputError: ``final`` exists (without ``overwrite``), is a file, is not
            ours to replace, its parent is missing or not writable; a full disk.
    """
    final = Path(final)
    parent = final.parent
    _check_folders([final])
    if final.exists() or final.is_symlink():
        if not final.is_dir() or final.is_symlink():
            raise OutputError(f"{final} exists and is not a folder")
        if not overwrite:
            raise OutputError(f"{final} exists; use overwrite=True", field="overwrite")
        if not _replaceable(final, marker):
            raise OutputError(
                f"{final} exists and is not an mscn-geo output folder (no {marker}); "
                "refusing to replace it: choose another folder"
            )
    _remove_stale_folders(final)
    temp = temporary_path(final)
    _remove(temp)  # leftover of a killed run that had the same pid
    temp.mkdir()
    try:
        yield temp
        for path in sorted(temp.rglob("*")):
            if path.is_file():
                _fsync(path)
        _fsync(temp)
    except BaseException as exc:
        disk_full = _is_disk_full(exc, parent)
        _remove(temp)
        if disk_full:
            raise OutputError(f"disk full while writing {final}") from exc
        raise
    # Named like a temporary, so that a run killed right here leaves nothing for long.
    old = final.with_name(f".{final.stem}.{os.getpid()}.partial.old{final.suffix}")
    if final.exists():
        _remove(old)
        os.replace(final, old)
    try:
        os.replace(temp, final)
    except BaseException:
        if old.exists() and not final.exists():
            os.replace(old, final)
        _remove(temp)
        raise
    _remove(old)
    _fsync(parent)
