"""Resumable runs: a journal of finished tiles next to a scene's outputs.

With ``resume`` every finished batch is appended, from inside the prediction
loop (:func:`~mscn_geo.predict.predict_tiles`' ``on_batch``), to the log
``tiles.log`` in the hidden folder ``<out>/.<scene stem>.mscn-resume/``: its
tiles' grid indexes, probabilities and nodata fractions, and the all-nodata
tiles finished with it. Records come in grid order and each covers the tiles
up to its ``end`` without gap; each carries a CRC-32, so a record torn by
SIGKILL or a power cut is detected and dropped with everything after it.

A run started again with the same arguments takes the finished prefix from the
log and runs the model from the first tile after it. Batches are consecutive
readable tiles in grid order, so the resumed run's batches are exactly those
of an uninterrupted run: the outputs are byte-identical.

The journal's ``fingerprint.json`` records what the results depend on: the
scene (resolved path, size, modification time), the model's SHA-256 and the
options. A journal with another fingerprint is refused with a message that
names what changed, never silently mixed in. Once the outputs are complete
under their temporary names the journal is marked ``complete`` (outputs that
exist next to a complete journal are this run's, killed while renaming them,
and are replaced); it is removed once they are in place. A successful run
without ``resume`` removes a journal of its outputs: it would describe an
older run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import struct
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mscn_geo.backends import resolve_backend
from mscn_geo.device import amp_name, autocast_dtype, resolve_device
from mscn_geo.errors import Interrupted, OptionError, OutputError
from mscn_geo.io.atomic import atomic_file, check_destination
from mscn_geo.models.checkpoint import LoadedModel
from mscn_geo.options import ClassifyOptions
from mscn_geo.plan import ScenePlan
from mscn_geo.predict import BatchRecord, ProgressCallback, TileResult, predict_tiles
from mscn_geo.reader import SceneInfo
from mscn_geo.tiling import TileGrid

__all__ = [
    "JOURNAL_SUFFIX",
    "Journal",
    "JournalRecord",
    "journal_dir",
    "model_digest",
    "predict_resumable",
    "run_fingerprint",
    "run_journal",
    "scene_fingerprint",
]

JOURNAL_SUFFIX = ".mscn-resume"
FINGERPRINT = "fingerprint.json"
LOG = "tiles.log"
COMPLETE = "complete"
_FORMAT = 2
_HEADER = struct.Struct("<4sqii")  # magic, end, classified tiles m, skipped tiles s
_MAGIC = b"MSCN"
_CRC = struct.Struct("<I")
#: The log is flushed to disk (fdatasync) at most this often; a torn tail is
#: detected by its CRC, so syncing less often only loses more work on a power cut.
SYNC_EVERY_S = 1.0

# Fingerprint option keys -> the ClassifyOptions field a user changes to change them.
_OPTION_FIELDS = {
    "bands": "bands",
    "tile": "tile_size",
    "stride": "stride",
    "read_tile": "resample",
    "scaling": "scale",
    "allow_no_crs": "allow_no_crs",
    "tta": "tta",
    "batch_size": "batch_size",
    "device": "device",
    "amp": "amp",
    "backend": "backend",
    "aoi": "aoi",
}


def journal_dir(scene: Path, out_dir: Path) -> Path:
    """``<out_dir>/.<scene stem>.mscn-resume``."""
    from mscn_geo.remote import scene_stem

    return Path(out_dir) / f".{scene_stem(scene)}{JOURNAL_SUFFIX}"


def model_digest(path: Path | None, state: dict[str, Any] | None = None) -> str:
    """SHA-256 of the checkpoint file (or of the weights of an in-memory model)."""
    digest = hashlib.sha256()
    if path is not None:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    elif state is not None:
        for name in sorted(state):
            digest.update(name.encode())
            digest.update(state[name].detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def scene_fingerprint(scene: Path | str) -> dict[str, Any]:
    from mscn_geo.remote import is_remote

    if is_remote(scene):  # no cheap, reliable size/mtime: the URL identifies it
        return {"scene": str(scene)}
    stat = Path(scene).stat()
    return {
        "scene": str(Path(scene).resolve()),
        "scene_bytes": stat.st_size,
        "scene_mtime_ns": stat.st_mtime_ns,
    }


def run_fingerprint(
    scene: Path, plan: ScenePlan, model: LoadedModel, options: ClassifyOptions
) -> dict[str, Any]:
    """What must be the same for a journal to be continued: scene, model, options."""
    info, grid = plan.info, plan.grid
    device = resolve_device(options.device)
    amp = autocast_dtype(device, options.amp)
    return {
        **scene_fingerprint(scene),
        "model_sha256": model_digest(model.path, None if model.path else model.model.state_dict()),
        "num_classes": model.meta.num_classes,
        "options": {
            "bands": info.band_indexes,
            "tile": grid.tile,
            "stride": grid.stride,
            "tiles": len(grid),
            "read_tile": info.read_tile,
            "scaling": info.scaling.to_dict() if info.scaling else None,
            "allow_no_crs": options.allow_no_crs,
            "tta": options.tta,  # changes every tile's probabilities
            "batch_size": options.batch_size_for(device.type),
            "device": device.type,
            "amp": amp_name(amp),
            # torch-bf16 moves probabilities by up to 0.006 against the fp32 backends.
            "backend": resolve_backend(options.backend, device, amp, model),
            # A different area of interest skips different tiles.
            "aoi": info.aoi.digest() if info.aoi is not None else None,
        },
    }


def _changed(old: dict[str, Any], new: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(what changed in words, the option fields among them)."""
    words, fields = [], []
    for key in sorted(set(old) | set(new)):
        if key == "options" and isinstance(old.get(key), dict):
            before, after = old[key], new[key]
            for name in sorted(set(before) | set(after)):
                field = _OPTION_FIELDS.get(name)
                if field and before.get(name) != after.get(name) and field not in fields:
                    fields.append(field)
            if not fields and before != after:
                words.append("options")
        elif old.get(key) != new.get(key):
            words.append(key)
    return fields + words, fields


@dataclass
class JournalRecord:
    """One record of the log: a finished batch (see :class:`~mscn_geo.predict.BatchRecord`)."""

    index: np.ndarray  # (m,) int64 flat grid indexes
    probs: np.ndarray  # (m, classes) float32
    nodata_fraction: np.ndarray  # (m,) float32
    skipped: np.ndarray  # (s,) int64 flat indexes of all-nodata tiles
    end: int


def _encode(record: BatchRecord) -> bytes:
    body = b"".join(
        (
            _HEADER.pack(_MAGIC, record.end, len(record.index), len(record.skipped)),
            np.ascontiguousarray(record.index, dtype="<i8").tobytes(),
            np.ascontiguousarray(record.probs, dtype="<f4").tobytes(),
            np.ascontiguousarray(record.nodata_fraction, dtype="<f4").tobytes(),
            np.ascontiguousarray(record.skipped, dtype="<i8").tobytes(),
        )
    )
    return body + _CRC.pack(zlib.crc32(body))


def _decode(data: bytes, k: int) -> Iterator[tuple[int, JournalRecord]]:
    """``(offset after the record, record)`` for the intact prefix of ``data``."""
    pos, end = 0, 0
    while pos + _HEADER.size <= len(data):
        magic, rec_end, m, s = _HEADER.unpack_from(data, pos)
        size = _HEADER.size + 8 * m + 4 * m * k + 4 * m + 8 * s
        if magic != _MAGIC or m < 0 or s < 0 or pos + size + _CRC.size > len(data):
            return
        body = data[pos : pos + size]
        (crc,) = _CRC.unpack_from(data, pos + size)
        if zlib.crc32(body) != crc or rec_end <= end:
            return
        at = _HEADER.size
        index = np.frombuffer(body, "<i8", m, at)
        probs = np.frombuffer(body, "<f4", m * k, at + 8 * m).reshape(m, k)
        fraction = np.frombuffer(body, "<f4", m, at + 8 * m + 4 * m * k)
        skipped = np.frombuffer(body, "<i8", s, at + 8 * m + 4 * m * k + 4 * m)
        pos, end = pos + size + _CRC.size, rec_end
        yield pos, JournalRecord(index, probs, fraction, skipped, rec_end)


class Journal:
    """The resume journal of one scene (see module doc)."""

    def __init__(self, folder: Path, fingerprint: dict[str, Any]) -> None:
        self.folder = Path(folder)
        self.fingerprint = {"format": _FORMAT, **fingerprint}
        self.num_classes = int(fingerprint.get("num_classes", 0))
        #: Tiles taken from the log by :meth:`load` (classified and skipped).
        self.taken = 0
        #: Classified tiles among them.
        self.taken_classified = 0
        #: Tiles appended by this run.
        self.appended = 0
        #: Outputs found next to the journal are its interrupted run's own.
        self.replaces_outputs = False
        self._fd: int | None = None
        self._synced = 0.0

    @classmethod
    def open(cls, folder: Path, fingerprint: dict[str, Any]) -> Journal:
        """Open the journal in ``folder`` or start one; refuse a different run's journal.

        Raises:
            OptionError: the journal was written for other inputs or options.
            OutputError: the folder cannot be created.
        """
        journal = cls(folder, fingerprint)
        found = journal.folder / FINGERPRINT
        if found.exists():
            try:
                old = json.loads(found.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                old = {}
            if old != journal.fingerprint:
                words, fields = _changed(old, journal.fingerprint)
                raise OptionError(
                    f"{journal.folder} is the resume journal of a different run "
                    f"({', '.join(words) or 'unreadable'} changed); run again with the "
                    "same scene, model and options, or delete that folder to start over",
                    field=tuple(fields),
                )
            return journal
        try:
            if journal.folder.exists():  # a folder without fingerprint: never usable
                shutil.rmtree(journal.folder)
            journal.folder.mkdir(parents=True)
            body = json.dumps(journal.fingerprint, indent=1, sort_keys=True).encode()
            with atomic_file(found) as tmp:
                tmp.write_bytes(body)
        except OSError as exc:
            raise OutputError(f"cannot write the resume journal {journal.folder}: {exc}") from exc
        return journal

    @staticmethod
    def is_complete(folder: Path) -> bool:
        """The journal in ``folder`` says its run's outputs were complete and being
        renamed into place (so outputs found next to it are that run's)."""
        return (Path(folder) / COMPLETE).exists()

    @property
    def kept(self) -> int:
        """Finished tiles in the journal (taken from it and appended by this run)."""
        return self.taken + self.appended

    def records(self) -> Iterator[JournalRecord]:
        """The intact records of the log, in order."""
        try:
            data = (self.folder / LOG).read_bytes()
        except FileNotFoundError:
            return
        for _, record in _decode(data, self.num_classes):
            yield record

    def load(self, result: TileResult) -> int:
        """Put the finished tiles of the log into ``result`` (the whole grid's).

        Drops a torn tail so that new records follow the intact ones. Returns the
        flat grid index the run continues from: every tile before it is finished.
        """
        log = self.folder / LOG
        try:
            data = log.read_bytes()
        except FileNotFoundError:
            data = b""
        good, start = 0, 0
        for good, record in _decode(data, self.num_classes):  # noqa: B007
            result.put(record.index, record.probs, record.nodata_fraction)
            start = record.end
            self.taken_classified += len(record.index)
        if good < len(data):
            with open(log, "r+b") as f:
                f.truncate(good)
        self.taken = start
        return start

    def append(self, record: BatchRecord) -> None:
        """Append one finished batch (called from inside the prediction loop)."""
        try:
            if self._fd is None:
                flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
                self._fd = os.open(self.folder / LOG, flags, 0o644)
            os.write(self._fd, _encode(record))
            self.appended += record.done
            now = time.monotonic()
            if now - self._synced >= SYNC_EVERY_S:
                os.fdatasync(self._fd)
                self._synced = now
        except OSError as exc:
            raise OutputError(f"cannot write the resume journal {self.folder}: {exc}") from exc

    def close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.fsync(self._fd)
            os.close(self._fd)
            self._fd = None

    def mark_complete(self) -> None:
        """Say the outputs are complete under their temporary names (see module doc)."""
        self.close()
        with atomic_file(self.folder / COMPLETE) as tmp:
            tmp.write_bytes(b"")

    def remove(self) -> None:
        self.close()
        shutil.rmtree(self.folder, ignore_errors=True)


@contextlib.contextmanager
def run_journal(
    scene: Path,
    plan: ScenePlan,
    model: LoadedModel,
    options: ClassifyOptions,
    finals: list[Path],
) -> Iterator[Journal | None]:
    """The journal of one run of ``scene`` (``None`` without ``options.resume``).

    Wraps the writing of the outputs: with ``resume`` existing outputs are
    refused unless ``overwrite`` or the journal is complete (then they are the
    interrupted run's own, see module doc: :attr:`Journal.replaces_outputs`), an
    interruption says where the finished tiles are kept, and the journal is
    removed once the block has put the outputs in place. Without ``resume`` a
    successful block removes a journal of these outputs: it is an older run's,
    and resuming it would replace these newer outputs.

    Raises:
        OutputError: outputs exist (and neither ``overwrite`` nor a complete journal).
        OptionError: the journal is a different run's.
    """
    folder = journal_dir(scene, options.out_dir)
    if not options.resume:
        yield None
        shutil.rmtree(folder, ignore_errors=True)
        return
    replaces = Journal.is_complete(folder)
    check_destination(finals, options.overwrite or replaces)
    journal = Journal.open(folder, run_fingerprint(scene, plan, model, options))
    journal.replaces_outputs = replaces
    try:
        yield journal
    except Interrupted as exc:
        if not journal.kept:
            raise
        raise Interrupted(exc.signum, journal=journal.folder) from None
    finally:
        journal.close()
    journal.remove()


def predict_resumable(
    info: SceneInfo,
    grid: TileGrid,
    model: LoadedModel,
    options: ClassifyOptions,
    progress: ProgressCallback | None,
    journal: Journal,
) -> tuple[TileResult, torch.device, torch.dtype | None]:
    """:func:`~mscn_geo.predict.predict_tiles` for the tiles the journal does not
    have yet, appending each finished batch to it."""
    n = len(grid)
    result = TileResult.empty(grid.tiles(), model.meta.num_classes)
    start = journal.load(result)
    if progress is not None:
        progress(start, n)

    def shifted(done: int, _total: int) -> None:
        if progress is not None:
            progress(start + done, n)

    try:
        part, device, amp = predict_tiles(
            info, grid, model, options, shifted, span=(start, n), on_batch=journal.append
        )
    finally:
        journal.close()
    rest = np.arange(start, n, dtype=np.int64)
    result.class_ids[rest] = part.class_ids
    result.probs[rest] = part.probs
    result.nodata_fraction[rest] = part.nodata_fraction
    return result, device, amp
