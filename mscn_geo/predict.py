"""The inference loop: every tile of a scene (or of a span of its grid) through the model.

Memory stays bounded whatever the scene size: tiles are read by a few threads a
bounded distance ahead of the model (:mod:`mscn_geo.pipeline`) and only
per-tile results (class and probabilities, a few bytes each) are kept. Each
finished batch is also handed to an ``on_batch`` callback as a
:class:`BatchRecord`, in grid order, while the loop runs: the resume journal,
and anything that wants the tiles' validity masks or to write results strip by
strip, hooks in there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from mscn_geo.backends import prepare_runner
from mscn_geo.device import autocast_dtype, resolve_device
from mscn_geo.models.checkpoint import LoadedModel
from mscn_geo.options import ClassifyOptions
from mscn_geo.pipeline import DihedralRunner, Normaliser, classify_stream, read_ahead
from mscn_geo.reader import SceneInfo, TilePixels, TileReader
from mscn_geo.tiling import Tile, TileGrid

__all__ = [
    "NODATA_CLASS",
    "BatchRecord",
    "Predictor",
    "ProgressCallback",
    "TileResult",
    "predict_tiles",
]

#: ``progress(tiles_done, tiles_total)``.
ProgressCallback = Callable[[int, int], None]
#: Class id of a tile (and raster pixel) without a class: all nodata.
NODATA_CLASS = 255


@dataclass
class TileResult:
    """Per-tile results of a span of the grid, in grid order (small: kept in memory).

    Attributes:
        tiles: the n tiles, in grid order.
        class_ids: (n,) uint8, :data:`NODATA_CLASS` for skipped (all-nodata) tiles.
        probs: (n, classes) float32, NaN for skipped tiles.
        nodata_fraction: (n,) float32, 1.0 for skipped tiles.
        start: flat grid index (``row * cols + col``) of ``tiles[0]``.
    """

    tiles: list[Tile]
    class_ids: np.ndarray
    probs: np.ndarray
    nodata_fraction: np.ndarray
    start: int = 0

    @classmethod
    def empty(cls, tiles: list[Tile], num_classes: int, start: int = 0) -> TileResult:
        """Results of ``tiles`` with every tile still marked skipped."""
        n = len(tiles)
        return cls(
            tiles,
            np.full(n, NODATA_CLASS, dtype=np.uint8),
            np.full((n, num_classes), np.nan, dtype=np.float32),
            np.ones(n, dtype=np.float32),
            start,
        )

    def put(self, index: np.ndarray, probs: np.ndarray, nodata_fraction: np.ndarray) -> None:
        """Store the results of the tiles at flat grid indexes ``index``."""
        rows = np.asarray(index, dtype=np.int64) - self.start
        self.probs[rows] = probs
        self.class_ids[rows] = probs.argmax(axis=1)
        self.nodata_fraction[rows] = nodata_fraction


@dataclass
class BatchRecord:
    """One finished batch, as :func:`predict_tiles` hands it to ``on_batch``.

    Records come in grid order and cover the span without gap or overlap: after
    a record, every tile of the span with flat index below ``end`` is finished
    (classified in this or an earlier record, or skipped). A last record may have
    no classified tile, only skipped ones.

    Attributes:
        index: (m,) int64 flat grid indexes (``row * cols + col``) of the batch's tiles.
        tiles: the m tiles.
        probs: (m, classes) float32 softmax probabilities.
        nodata_fraction: (m,) float32 nodata share of each tile's in-scene pixels.
        valid: m (T, T) bool validity masks (False for nodata and padding; T is
            the tile size the model saw, ``info.read_tile`` with resampling).
        skipped: (s,) int64 flat indexes of the all-nodata tiles finished with this
            record (never batched; their class is :data:`NODATA_CLASS`).
        end: flat index one past the last tile this record finishes.
    """

    index: np.ndarray
    tiles: list[Tile]
    probs: np.ndarray
    nodata_fraction: np.ndarray
    valid: list[np.ndarray]
    skipped: np.ndarray
    end: int

    @property
    def done(self) -> int:
        """Tiles this record finishes (classified and skipped)."""
        return len(self.index) + len(self.skipped)


#: ``predictor(info, grid, model, options, progress)``: per-tile results of every
#: tile of ``grid``, with the device and autocast dtype they were computed with.
Predictor = Callable[
    [SceneInfo, TileGrid, LoadedModel, ClassifyOptions, ProgressCallback | None],
    tuple[TileResult, torch.device, torch.dtype | None],
]


def predict_tiles(
    info: SceneInfo,
    grid: TileGrid,
    model: LoadedModel,
    options: ClassifyOptions,
    progress: ProgressCallback | None = None,
    *,
    span: tuple[int, int] | None = None,
    on_batch: Callable[[BatchRecord], None] | None = None,
) -> tuple[TileResult, torch.device, torch.dtype | None]:
    """Run the model over the tiles of ``grid``; returns per-tile results.

    Reading, batching, normalising and storing results overlap with the model
    (see :mod:`mscn_geo.pipeline`); results do not depend on ``workers`` or
    ``batch_size`` beyond float rounding of batched convolutions.

    Args:
        progress: called as ``progress(tiles_done, tiles_total)`` (of the span).
        span: ``(start, stop)`` flat grid indexes: only tiles ``start..stop-1``
            (a block of rows, or what a resumed run has left); default: all.
        on_batch: called with each :class:`BatchRecord`, in grid order, as soon as
            its batch is finished. An exception it raises stops the run.

    Returns:
        ``(results of the span, device, autocast dtype or None)``.
    """
    start, stop = (0, len(grid)) if span is None else (max(0, span[0]), min(span[1], len(grid)))
    stop = max(start, stop)
    device = resolve_device(options.device)
    amp = autocast_dtype(device, options.amp)
    runner = prepare_runner(
        model,
        device,
        amp,
        backend=options.backend,
        tile_size=info.read_tile or grid.tile,
        channels_last=options.channels_last,
        compile=options.compile,
    )
    if options.tta:
        runner = DihedralRunner(runner)
    norm = Normaliser(
        model.meta, device, channels_last=runner.channels_last, pixel_units=runner.pixel_input
    )
    tiles = list(grid.iter_tiles(start, stop))
    n = len(tiles)
    result = TileResult.empty(tiles, model.meta.num_classes, start)
    cols = grid.shape[1]
    skipped: list[int] = []  # finished with the next record
    done = 0

    def tick(count: int) -> None:
        nonlocal done
        done += count
        if progress is not None:
            progress(done, n)

    def on_skipped(item: TilePixels) -> None:
        skipped.append(item.tile.row * cols + item.tile.col)
        tick(1)

    def emit(record: BatchRecord) -> None:
        if on_batch is not None:
            on_batch(record)

    # Enough tiles in flight to fill the next batch while this one runs, and to
    # keep every reader thread busy; bounded whatever the scene size.
    batch_size = options.batch_size_for(device.type)
    workers = options.workers_for(device.type)
    depth = max(batch_size * 2, workers * 4)
    with TileReader(info, grid.tile) as reader, torch.inference_mode():
        items = read_ahead(reader, tiles, workers, depth)
        for out in classify_stream(items, runner, norm, batch_size, on_skipped):
            index = np.array([t.row * cols + t.col for t in out.tiles], dtype=np.int64)
            result.put(index, out.probs, out.nodata_fraction)
            end = int(index[-1]) + 1
            # Skipped tiles after this batch's last tile (read while it ran) wait
            # for the next record, so records stay in grid order.
            before = [i for i in skipped if i < end]
            skipped[:] = [i for i in skipped if i >= end]
            emit(
                BatchRecord(
                    index,
                    out.tiles,
                    out.probs,
                    out.nodata_fraction,
                    out.valid,
                    np.array(before, dtype=np.int64),
                    end,
                )
            )
            tick(len(index))  # after the hooks: what progress counts is recorded
        if skipped:
            k = model.meta.num_classes
            emit(
                BatchRecord(
                    np.zeros(0, dtype=np.int64),
                    [],
                    np.zeros((0, k), dtype=np.float32),
                    np.zeros(0, dtype=np.float32),
                    [],
                    np.array(skipped, dtype=np.int64),
                    stop,
                )
            )
    if progress is not None and n == 0:
        progress(0, 0)
    return result, device, amp
