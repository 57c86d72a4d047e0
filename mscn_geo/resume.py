"""Resumable runs: a journal of finished tiles next to a scene's outputs.

With ``--resume`` a scene's tiles are classified in fixed chunks (tile ``k*C``
to ``(k+1)*C - 1`` of the grid, ``C`` a whole number of batches) and each
finished chunk's results (class ids, probabilities, nodata fractions) are
stored in the hidden folder ``<out>/.<scene stem>.mscn-resume/`` as
``chunk-<k>.npz``, written under a temporary name, flushed and renamed, so a
chunk file is complete or absent whatever kills the process (even SIGKILL or
a power cut). A run started again with the same arguments reads the chunks,
classifies only the missing ones (with the same chunk boundaries, so every
batch is the same as in an uninterrupted run) and writes the outputs from the
union; the journal is removed once the outputs are in place.

The journal's ``fingerprint.json`` records what the results depend on: the
scene (resolved path, size, modification time), the model file's SHA-256 and
the options. A journal with another fingerprint is refused with a message that
names what changed, never silently mixed in.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mscn_geo.device import amp_name, autocast_dtype, resolve_device
from mscn_geo.errors import OptionError, OutputError
from mscn_geo.io.atomic import atomic_file
from mscn_geo.models.checkpoint import LoadedModel
from mscn_geo.options import ClassifyOptions
from mscn_geo.plan import ScenePlan
from mscn_geo.predict import ProgressCallback, TileResult, predict_tiles
from mscn_geo.reader import SceneInfo
from mscn_geo.tiling import TileGrid

__all__ = [
    "JOURNAL_SUFFIX",
    "Journal",
    "journal_dir",
    "model_digest",
    "predict_resumable",
    "run_fingerprint",
    "scene_fingerprint",
]

JOURNAL_SUFFIX = ".mscn-resume"
FINGERPRINT = "fingerprint.json"
_FORMAT = 1
RESUME_CHUNK_BATCHES = 4  # batches per resume-journal chunk


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


def _write_atomic(path: Path, write: Any) -> None:
    with atomic_file(path) as tmp, open(tmp, "wb") as f:
        write(f)


@dataclass
class ChunkResult:
    """Results of one chunk: tile indexes into the grid and their values."""

    index: np.ndarray  # (m,) int64
    class_ids: np.ndarray  # (m,) uint8
    probs: np.ndarray  # (m, classes) float32
    nodata_fraction: np.ndarray  # (m,) float32


class Journal:
    """The resume journal of one scene (see module doc)."""

    def __init__(self, folder: Path, fingerprint: dict[str, Any]) -> None:
        self.folder = Path(folder)
        self.fingerprint = {"format": _FORMAT, **fingerprint}

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
                changed = sorted(
                    k
                    for k in set(old) | set(journal.fingerprint)
                    if old.get(k) != journal.fingerprint.get(k)
                )
                raise OptionError(
                    f"{journal.folder} is the resume journal of a different run "
                    f"({', '.join(changed) or 'unreadable'} changed); run again with the "
                    "same scene, model and options, or delete that folder to start over"
                )
            return journal
        try:
            journal.folder.mkdir(parents=True, exist_ok=True)
            body = json.dumps(journal.fingerprint, indent=1, sort_keys=True).encode()
            _write_atomic(found, lambda f: f.write(body))
        except OSError as exc:
            raise OutputError(f"cannot write the resume journal {journal.folder}: {exc}") from exc
        return journal

    def exists(self) -> bool:
        return (self.folder / FINGERPRINT).exists()

    def _chunk_path(self, k: int) -> Path:
        return self.folder / f"chunk-{k:06d}.npz"

    def chunks(self) -> Iterator[tuple[int, ChunkResult]]:
        """Finished chunks ``(k, result)``; an unreadable chunk is skipped (redone)."""
        for path in sorted(self.folder.glob("chunk-*.npz")):
            try:
                k = int(path.stem.split("-")[1])
                with np.load(path) as data:
                    yield (
                        k,
                        ChunkResult(
                            data["index"],
                            data["class_ids"],
                            data["probs"],
                            data["nodata_fraction"],
                        ),
                    )
            except (OSError, ValueError, KeyError, IndexError):
                continue

    def save(self, k: int, result: ChunkResult) -> None:
        """Store chunk ``k`` atomically (complete or absent)."""

        def write(f: Any) -> None:
            np.savez(
                f,
                index=result.index,
                class_ids=result.class_ids,
                probs=result.probs,
                nodata_fraction=result.nodata_fraction,
            )

        try:
            _write_atomic(self._chunk_path(k), write)
        except OSError as exc:
            raise OutputError(f"cannot write the resume journal {self.folder}: {exc}") from exc

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def run_fingerprint(
    scene: Path, plan: ScenePlan, model: LoadedModel, options: ClassifyOptions
) -> dict[str, Any]:
    """What must be the same for a journal to be continued: scene, model, options."""
    info, grid = plan.info, plan.grid
    device = resolve_device(options.device)
    return {
        **scene_fingerprint(scene),
        "model_sha256": model_digest(model.path, None if model.path else model.model.state_dict()),
        "options": {
            "bands": info.band_indexes,
            "tile": grid.tile,
            "stride": grid.stride,
            "tiles": len(grid),
            "read_tile": info.read_tile,
            "scaling": info.scaling.to_dict() if info.scaling else None,
            "allow_no_crs": options.allow_no_crs,
            "batch_size": options.batch_size,
            "device": device.type,
            "amp": amp_name(autocast_dtype(device, options.amp)),
            "chunk_tiles": _chunk_tiles(options),
        },
    }


def _chunk_tiles(options: ClassifyOptions) -> int:
    # A whole number of batches, so a chunk's batches are the same whether or
    # not the run was interrupted before it.
    return options.batch_size * RESUME_CHUNK_BATCHES


def predict_resumable(
    info: SceneInfo,
    grid: TileGrid,
    model: LoadedModel,
    options: ClassifyOptions,
    progress: ProgressCallback | None,
    journal: Journal,
) -> tuple[TileResult, torch.device, torch.dtype | None]:
    """:func:`~mscn_geo.predict.predict_tiles` that takes finished chunks from ``journal``
    and stores each chunk it computes there."""
    tiles = grid.tiles()
    n = len(tiles)
    result = TileResult.empty(tiles, model.meta.num_classes)
    size = _chunk_tiles(options)
    done_chunks: set[int] = set()
    for c, chunk in journal.chunks():
        result.class_ids[chunk.index] = chunk.class_ids
        result.probs[chunk.index] = chunk.probs
        result.nodata_fraction[chunk.index] = chunk.nodata_fraction
        done_chunks.add(c)
    done = sum(min(size, n - c * size) for c in done_chunks if c * size < n)
    if progress is not None:
        progress(done, n)
    device = resolve_device(options.device)
    amp = autocast_dtype(device, options.amp)
    for c in range(-(-n // size)):
        if c in done_chunks:
            continue
        lo, hi = c * size, min(n, (c + 1) * size)
        offset = done

        def chunk_progress(d: int, _total: int, offset: int = offset) -> None:
            if progress is not None:
                progress(offset + d, n)

        part, device, amp = predict_tiles(info, grid, model, options, chunk_progress, span=(lo, hi))
        index = np.arange(lo, hi, dtype=np.int64)
        result.class_ids[index] = part.class_ids
        result.probs[index] = part.probs
        result.nodata_fraction[index] = part.nodata_fraction
        journal.save(c, ChunkResult(index, part.class_ids, part.probs, part.nodata_fraction))
        done += hi - lo
    return result, device, amp
