"""The streaming inference loop: tiles are read, batched, normalised and classified
with every stage overlapping the model.

Stages and where they run:

* reading and decoding: ``workers`` threads, each with its own rasterio dataset
  handle (:class:`~mscn_geo.reader.TileReader`), at most ``depth`` tiles ahead of
  the model (GDAL releases the GIL while it decodes, so threads run in parallel);
* batching: the calling thread copies each tile's pixels straight into a batch
  buffer (pinned host memory on CUDA, so the host-to-device copy is asynchronous);
* normalising: on the device, in the model's dtype, only multiplying by the
  validity mask when some pixel of the batch is nodata or padding;
* results: softmax on the device, copied back without blocking and collected one
  batch later, so the GPU already runs the next batch while the host stores the
  last one. Only per-tile classes and probabilities are kept (a few bytes a tile).

Memory is bounded by ``depth`` tiles in flight plus two batches, whatever the
scene size.
"""

from __future__ import annotations

import copy
import functools
import itertools
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

from mscn_geo.cpu_allocator import keep_large_allocations
from mscn_geo.models.checkpoint import ModelMeta
from mscn_geo.reader import TilePixels
from mscn_geo.tiling import Tile


class _Reads(Protocol):
    def read(self, tile: Tile) -> TilePixels: ...


@runtime_checkable
class _ReadsRuns(Protocol):
    def read(self, tile: Tile) -> TilePixels: ...
    def can_read_runs(self) -> bool: ...
    def read_run(self, tiles: list[Tile]) -> list[TilePixels]: ...


#: Tiles one reading task covers at most (:meth:`TileReader.read_run`): enough to make
#: the per-task costs small, few enough that every worker has tasks.
RUN_TILES = 8


def _units(tiles: Iterable[Tile], size: int) -> Iterator[list[Tile]]:
    """``tiles`` in consecutive lists of ``size`` (the last may be shorter)."""
    todo = iter(tiles)
    while unit := list(itertools.islice(todo, size)):
        yield unit


def read_ahead(
    reader: _Reads, tiles: Iterable[Tile], workers: int, depth: int
) -> Iterator[TilePixels]:
    """Read ``tiles`` in order with ``workers`` threads, about ``depth`` tiles in flight.

    Consecutive tiles are read by one task, :data:`RUN_TILES` at most, when
    the reader can (:meth:`~mscn_geo.reader.TileReader.read_run`); ``depth``
    counts tiles either way. ``workers == 0`` reads in the calling thread. Tiles
    come back in the order given whatever order the threads finish in; a read
    error is raised when its tile's turn comes, and the reads after it are cancelled.
    """
    depth = max(depth, 1)
    # What one task reads, decided once: runs of consecutive tiles where the reader
    # can, else single tiles.
    read_unit: Callable[[list[Tile]], list[TilePixels]]
    if isinstance(reader, _ReadsRuns) and reader.can_read_runs():
        size, read_unit = max(1, min(RUN_TILES, depth // 2)), reader.read_run
    else:
        size, read_unit = 1, lambda unit: [reader.read(unit[0])]
    units = _units(tiles, size)
    if workers == 0:
        for unit in units:
            yield from read_unit(unit)
        return
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mscn-geo-read")
    pending: deque[tuple[Future[list[TilePixels]], int]] = deque()
    in_flight = 0
    try:
        for unit in units:
            pending.append((pool.submit(read_unit, unit), len(unit)))
            in_flight += len(unit)
            while pending and in_flight >= depth:
                fut, n = pending.popleft()
                done = fut.result()
                in_flight -= n
                yield from done
        while pending:
            fut, n = pending.popleft()
            in_flight -= n
            yield from fut.result()
    finally:
        for fut, _ in pending:
            fut.cancel()
        pool.shutdown(wait=True)


class Normaliser:
    """uint8 tiles + validity -> a normalised float batch on the device.

    Pixels are stacked straight into one (B, bands, T, T) uint8 buffer (pinned
    on CUDA: PyTorch's caching host allocator recycles it once its copy is
    done), copied to the device without blocking, and normalised there:
    ``(x / 255 - mean) / std`` folded into one multiply-add. Nodata and padding
    become 0 after normalisation, i.e. the band mean.
    """

    def __init__(
        self,
        meta: ModelMeta,
        device: torch.device,
        channels_last: bool = False,
        pin_memory: bool | None = None,
        pixel_units: bool = False,
    ) -> None:
        """``pin_memory``: stage batches in pinned host memory (default: on for CUDA).
        ``pixel_units``: for a runner that normalises itself (ONNX Runtime): only
        convert to float32 and put the band mean (in pixel units) where pixels are
        nodata, which the runner then normalises to 0 like this class would."""
        self.device = device
        self.channels_last = channels_last
        self.pixel_units = pixel_units
        mean = torch.tensor(meta.mean, dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.tensor(meta.std, dtype=torch.float32).view(1, -1, 1, 1)
        self.scale = (1.0 / (255.0 * std)).to(device)
        self.shift = (-mean / std).to(device)
        self.mean_pixels = (255.0 * mean).to(device)
        self._pin = device.type == "cuda" if pin_memory is None else pin_memory

    def _host(self, arrays: list[np.ndarray], dtype: torch.dtype) -> torch.Tensor:
        shape = (len(arrays), *arrays[0].shape)
        buf = torch.empty(shape, dtype=dtype, pin_memory=self._pin)
        np.stack(arrays, out=buf.numpy())
        return buf

    def __call__(
        self, pixels: list[np.ndarray], valid: list[np.ndarray] | None = None
    ) -> torch.Tensor:
        """(B, bands, T, T) float32 on the device.

        Args:
            pixels: B arrays of (bands, T, T) uint8.
            valid: B arrays of (T, T) bool, or ``None`` when every pixel is valid.
        """
        if self.pixel_units:  # stacked straight into float32: one pass over the pixels
            x = self._host(pixels, torch.float32)
            if valid is not None:
                x = torch.where(self._host(valid, torch.bool).unsqueeze(1), x, self.mean_pixels)
            return x.to(self.device)
        x = self._host(pixels, torch.uint8).to(self.device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        x = torch.addcmul(self.shift, x, self.scale)  # float32, x * scale + shift
        if valid is not None:
            v = self._host(valid, torch.bool).to(self.device, non_blocking=True)
            x = x * v.unsqueeze(1)
        return x


@dataclass
class ModelRunner:
    """The model as the loop runs it: device, autocast dtype, memory format, compiled or not.

    The benchmark's "model-only" figure calls this same object on random
    tensors, so the two figures differ only by the pipeline around it.
    """

    net: Callable[[torch.Tensor], torch.Tensor]
    device: torch.device
    amp: torch.dtype | None
    channels_last: bool
    pixel_input: bool = False  # takes normalised batches

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Logits -> softmax probabilities, float32, still on the device."""
        with torch.autocast(
            self.device.type, dtype=self.amp or torch.float32, enabled=self.amp is not None
        ):
            logits = self.net(x)
        return torch.softmax(logits.float(), dim=1)


@dataclass
class DihedralRunner:
    """Test-time augmentation around any runner (PyTorch or ONNX Runtime): the mean
    of its probabilities over the 8 flips/rotations of the batch (8x the work, the
    memory of one batch: one view at a time)."""

    runner: Any

    @property
    def device(self) -> torch.device:
        return self.runner.device

    @property
    def amp(self) -> torch.dtype | None:
        return self.runner.amp

    @property
    def channels_last(self) -> bool:
        return self.runner.channels_last

    @property
    def pixel_input(self) -> bool:
        return self.runner.pixel_input

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        from mscn_geo.evaluate import dihedral

        layout = torch.channels_last if self.channels_last else torch.contiguous_format
        views = [v.contiguous(memory_format=layout) for v in dihedral(x)]
        return sum(self.runner(v) for v in views) / len(views)  # type: ignore[return-value]


def prepare_model(
    model: nn.Module,
    device: torch.device,
    amp: torch.dtype | None,
    channels_last: bool = True,
    compile: bool = False,
    *,
    mixed: torch.dtype | None = None,
) -> ModelRunner:
    """A copy of ``model`` on ``device`` in eval mode; channels-last and ``torch.compile`` optional.

    ``mixed`` (with ``amp`` None): run ``model.forward_mixed(x, mixed)``, the
    convolutions in that dtype and the rest in float32 (the ``torch-bf16`` backend).

    The caller's module is left as it was (device, train/eval mode, memory
    format, attributes): the runner holds its own copy, freed with the runner.
    channels_last is the default on CPU and CUDA: measured faster for the
    ResNet backbones (README, Performance). ``compile`` is off by default: on
    real imagery the MSC top-k tie check breaks the graph, and classify ran
    slower compiled than eager on CPU (README, Performance).
    """
    if device.type == "cpu":
        keep_large_allocations()  # eager PyTorch on CPU: 1.3x (mscn_geo.cpu_allocator)
    net: nn.Module = copy.deepcopy(model).eval().requires_grad_(False).to(device)
    net = net.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    runner: Callable[[torch.Tensor], torch.Tensor] = net
    if mixed is not None:
        runner = functools.partial(net.forward_mixed, dtype=mixed)  # type: ignore[operator]
    if compile:
        runner = torch.compile(runner, dynamic=False)  # type: ignore[assignment]
    return ModelRunner(runner, device, amp, channels_last)


@dataclass
class BatchResult:
    """Class probabilities of one batch, in the order its tiles were given.

    Attributes:
        tiles: the batch's n tiles.
        probs: (n, classes) float32 softmax probabilities.
        valid: n (T, T) bool validity masks as read (False for nodata and padding;
            T is the tile size the model saw).
        nodata_fraction: (n,) float32, nodata share of each tile's in-scene pixels.
    """

    tiles: list[Tile]
    probs: np.ndarray
    valid: list[np.ndarray]
    nodata_fraction: np.ndarray


def classify_stream(
    items: Iterable[TilePixels],
    runner: ModelRunner,
    normaliser: Normaliser,
    batch_size: int,
    on_skipped: Callable[[TilePixels], None] | None = None,
) -> Iterator[BatchResult]:
    """Batch the readable tiles of ``items`` through ``runner``; yield results per batch.

    Tiles without pixels (all nodata) are passed to ``on_skipped`` and never
    batched. On CUDA each batch's probabilities are copied back without
    blocking and yielded after the next batch has been queued, so the device
    never waits for the host to store results.
    """
    on_cuda = runner.device.type == "cuda"
    waiting: deque[tuple[list[TilePixels], torch.Tensor, torch.cuda.Event | None]] = deque()

    def submit(batch: list[TilePixels]) -> None:
        assert batch[0].pixels is not None
        all_valid = all(b.nodata_fraction == 0 and not b.tile.padded for b in batch)
        x = normaliser(
            [b.pixels for b in batch],  # type: ignore[misc]
            None if all_valid else [b.valid for b in batch],  # type: ignore[misc]
        )
        p = runner(x)
        if on_cuda:
            host = torch.empty(p.shape, dtype=p.dtype, pin_memory=True)
            host.copy_(p, non_blocking=True)
            done = torch.cuda.Event()
            done.record()
            waiting.append((batch, host, done))
        else:
            waiting.append((batch, p, None))

    def collect() -> BatchResult:
        items, host, done = waiting.popleft()
        if done is not None:
            done.synchronize()
        return BatchResult(
            [b.tile for b in items],
            host.numpy(),
            [b.valid for b in items],  # type: ignore[misc]
            np.array([b.nodata_fraction for b in items], dtype=np.float32),
        )

    batch: list[TilePixels] = []
    for item in items:
        if item.pixels is None:
            if on_skipped is not None:
                on_skipped(item)
            continue
        batch.append(item)
        if len(batch) == batch_size:
            submit(batch)
            batch = []
            while len(waiting) > (1 if on_cuda else 0):
                yield collect()
    if batch:
        submit(batch)
    while waiting:
        yield collect()
