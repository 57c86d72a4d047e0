"""Classify a scene: tiles in, GeoPackage polygons and a class raster out.

Memory stays bounded whatever the scene size: tiles are read by a few threads
a bounded distance ahead of the model, only per-tile results (class and
probabilities, a few bytes each) are kept, and the class raster is written in
strips from those.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mscn_geo.device import amp_name, autocast_dtype, resolve_device
from mscn_geo.errors import OptionError, OutputError
from mscn_geo.models.checkpoint import LoadedModel, ModelMeta
from mscn_geo.pipeline import Normaliser, classify_stream, prepare_model, read_ahead
from mscn_geo.reader import (
    SceneInfo,
    TilePixels,
    TileReader,
    block_cache_bounded,
    open_scene,
    parse_bands,
)
from mscn_geo.scaling import parse_scale
from mscn_geo.tiling import MIN_TILE, Tile, TileGrid

ProgressCallback = Callable[[int, int], None]
NODATA_CLASS = 255
RESUME_CHUNK_BATCHES = 4  # batches per resume-journal chunk
STRIP_ROWS = 512  # class-raster rows written at a time (the writer's block height)


@dataclass
class ClassifyOptions:
    """Options of :func:`classify_scene` (the ``mscn-geo classify`` options).

    Attributes:
        tile_size: tile edge in pixels; ``None``: the model's ``meta.tile_size``.
        stride: tile step in pixels; ``None``: the tile size (no overlap).
        bands: 1-based scene bands in the model's band order; ``None``: automatic.
        batch_size: tiles per forward pass.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        amp: mixed precision; ``None``: on for CUDA, off for CPU.
        workers: threads reading tiles (0: read in the calling thread).
        out_dir: folder for the outputs (created if missing).
        overwrite: replace existing outputs instead of failing.
        channels_last: run the model in channels-last memory format (faster for
            the ResNet backbones on CPU and CUDA; README, Performance).
        compile: ``torch.compile`` the model first (not a CLI option: measured slower
            for classify on CPU, README, Performance).
        scale: ``"MIN,MAX"`` linear scaling to 0..255 (``--scale``); default: a
            per-band percentile stretch for non-uint8 data (:mod:`mscn_geo.scaling`).
        allow_no_crs: classify a scene without CRS; outputs have no CRS and are
            in the scene's pixel (or own) coordinates.
        pad: pad a scene smaller than one tile (``False``: refuse it).
        resample: read tiles at the model's pixel size (windows of the matching
            number of scene pixels, resampled to the tile size).
        resume: keep finished tiles in a journal next to the outputs and continue
            from it (:mod:`mscn_geo.resume`).
    """

    tile_size: int | None = None
    stride: int | None = None
    bands: list[int] | str | None = None
    batch_size: int = 16
    device: str = "auto"
    amp: bool | None = None
    workers: int = 2
    out_dir: Path = field(default_factory=lambda: Path("."))
    overwrite: bool = False
    channels_last: bool = True
    compile: bool = False
    scale: str | tuple[float, float] | None = None
    allow_no_crs: bool = False
    pad: bool = True
    resample: bool = False
    resume: bool = False

    def check(self) -> None:
        if self.batch_size < 1:
            raise OptionError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.workers < 0:
            raise OptionError(f"--workers must be 0 or more, got {self.workers}")
        parse_scale(self.scale)
        parse_bands(self.bands)


@dataclass
class ScenePlan:
    """What classify will do with a scene (also what ``mscn-geo info`` shows).

    ``grid`` is in scene pixels (with ``--resample`` its tiles are larger or
    smaller than the model's and read at the model's tile size).
    """

    info: SceneInfo
    grid: TileGrid
    warnings: list[str]

    pixel_size_m: float | None = None

    def to_dict(self) -> dict[str, Any]:
        info, grid = self.info, self.grid
        rows, cols = grid.shape
        nodata = info.nodata
        return {
            "scene": str(info.path),
            "width": info.width,
            "height": info.height,
            "bands": info.count,
            "dtype": info.dtype,
            "crs": _crs_name(info),
            "pixel_size": list(info.res),
            "pixel_size_m": None if self.pixel_size_m is None else round(self.pixel_size_m, 6),
            "nodata": "nan" if nodata is not None and math.isnan(nodata) else nodata,
            "bands_used": info.band_indexes,
            "scaling": info.scaling.describe() if info.scaling else "none (8-bit data used as is)",
            "tile_size": grid.tile,
            "stride": grid.stride,
            "resample": (
                f"tiles of {grid.tile} scene px read at {info.read_tile} px"
                if info.read_tile
                else "off"
            ),
            "tile_rows": rows,
            "tile_cols": cols,
            "tiles": len(grid),
            "padded": grid.tiles()[0].padded,
            "warnings": list(self.warnings),
        }


def _crs_name(info: SceneInfo) -> str | None:
    return None if info.crs is None else info.crs.to_string()


def plan_scene(
    scene: str | os.PathLike[str], meta: ModelMeta, options: ClassifyOptions
) -> ScenePlan:
    """Open and check ``scene`` and lay the tile grid.

    Reads the header, one pixel, and for non-uint8 data the sample of the
    scaling estimate (overviews or a fixed set of windows); never every tile.
    """
    tile = meta.tile_size if options.tile_size is None else options.tile_size
    stride = tile if options.stride is None else options.stride
    info = open_scene(
        scene,
        meta.bands,
        parse_bands(options.bands),
        scale=options.scale,
        allow_no_crs=options.allow_no_crs,
    )
    warnings = list(info.warnings)
    if info.crs is None:
        warnings.append("scene has no CRS: outputs are in pixel coordinates, without CRS")
    size_m = pixel_size_m(info)
    window, window_stride = tile, stride
    if options.resample:
        if size_m is None or not meta.pixel_size_m:
            raise OptionError(
                f"--resample needs the scene's pixel size in metres; {info.path} has no usable CRS"
            )
        scale = meta.pixel_size_m / size_m  # scene pixels per model pixel
        window = round(tile * scale)
        window_stride = min(window, max(1, round(stride * scale)))
        if window < MIN_TILE:
            raise OptionError(
                f"--resample: a {tile} px tile at the model's {meta.pixel_size_m:g} m covers "
                f"only {window} scene pixels of {size_m:.3g} m (at least {MIN_TILE} needed)"
            )
        if window != tile:
            info.read_tile, info.read_scale = tile, window / tile
    grid = TileGrid(info.width, info.height, window, window_stride)
    if tile != meta.tile_size:
        warnings.append(f"tile size {tile} px differs from the model's {meta.tile_size} px")
    if grid.tiles()[0].padded:
        if not options.pad:
            raise OptionError(
                f"tile size {window} px is larger than the scene ({info.width}x{info.height} px)"
                " with padding off (--no-pad); use a smaller --tile-size or allow padding"
            )
        warnings.append(
            f"scene ({info.width}x{info.height} px) is smaller than one {window} px tile: "
            "the tile is padded (padded = true)"
        )
    if not options.resample:
        warnings.extend(_pixel_size_warnings(size_m, meta))
    return ScenePlan(info, grid, warnings, size_m)


def pixel_size_m(info: SceneInfo) -> float | None:
    """Side of a (square-equivalent) scene pixel in metres; ``None`` when unknown.

    Projected CRS: from its linear unit. Geographic CRS: estimated at the scene
    centre (1 degree of latitude = 110.574 km, of longitude that times cos(lat)).
    """
    crs, t = info.crs, info.transform
    if crs is None:
        return None
    area = abs(t.a * t.e - t.b * t.d)  # a rotated/sheared pixel's area in CRS units
    if crs.is_geographic:
        lat = t.d * info.width / 2 + t.e * info.height / 2 + t.f
        cos_lat = max(math.cos(math.radians(max(-89.0, min(89.0, lat)))), 1e-6)
        return math.sqrt(area * cos_lat) * 110_574.0
    if not crs.is_projected:
        return None
    try:
        metres = crs.linear_units_factor[1]
    except Exception:  # CRS without linear units
        return None
    return math.sqrt(area) * metres


def _pixel_size_warnings(size: float | None, meta: ModelMeta) -> list[str]:
    if size is None or not meta.pixel_size_m:
        return []
    ratio = size / meta.pixel_size_m
    if 0.5 <= ratio <= 2:
        return []
    return [
        f"pixel size {size:.3g} m is {ratio:.2g}x the model's {meta.pixel_size_m:g} m: classes"
        " may be unreliable; pass --resample to read tiles at the model's pixel size"
    ]


@dataclass
class TileResult:
    """Per-tile results, in grid order (small: kept in memory for the whole scene)."""

    tiles: list[Tile]
    class_ids: np.ndarray  # (n,) uint8, 255 for skipped tiles
    probs: np.ndarray  # (n, classes) float32, NaN for skipped tiles
    nodata_fraction: np.ndarray  # (n,) float32


@dataclass
class SceneResult:
    """Outcome of :func:`classify_scene`; ``to_dict()`` is the ``--json`` summary."""

    scene: Path
    crs: str
    bands: list[int]
    tiles: int
    classified: int
    skipped: int
    padded: int
    per_class: dict[str, int]
    seconds: float
    device: str
    amp: str
    model_path: str
    model_label: str
    trained: bool
    outputs: dict[str, Path]
    warnings: list[str]

    @property
    def tiles_per_s(self) -> float:
        return self.classified / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "scene": str(self.scene),
            "crs": self.crs,
            "bands": list(self.bands),
            "tiles": self.tiles,
            "classified": self.classified,
            "skipped": self.skipped,
            "padded": self.padded,
            "per_class": dict(self.per_class),
            "seconds": round(self.seconds, 3),
            "tiles_per_s": round(self.tiles_per_s, 2),
            "device": self.device,
            "amp": self.amp,
            "model": {"path": self.model_path, "label": self.model_label, "trained": self.trained},
            "outputs": {k: str(v) for k, v in self.outputs.items()},
            "warnings": list(self.warnings),
        }


def predict_tiles(
    info: SceneInfo,
    grid: TileGrid,
    model: LoadedModel,
    options: ClassifyOptions,
    progress: ProgressCallback | None = None,
) -> tuple[TileResult, torch.device, torch.dtype | None]:
    """Run the model over every tile of ``grid``; returns per-tile results.

    Reading, batching, normalising and storing results overlap with the model
    (see :mod:`mscn_geo.pipeline`); results do not depend on ``workers`` or
    ``batch_size`` beyond float rounding of batched convolutions.
    """
    device = resolve_device(options.device)
    amp = autocast_dtype(device, options.amp)
    runner = prepare_model(
        model.model,
        device,
        amp,
        channels_last=options.channels_last,
        compile=options.compile,
    )
    norm = Normaliser(model.meta, device, channels_last=runner.channels_last)
    tiles = grid.tiles()
    n, k = len(tiles), model.meta.num_classes
    class_ids = np.full(n, NODATA_CLASS, dtype=np.uint8)
    probs = np.full((n, k), np.nan, dtype=np.float32)
    nodata_fraction = np.ones(n, dtype=np.float32)
    index = {(t.row, t.col): i for i, t in enumerate(tiles)}
    done = 0

    def record(items: Iterator[TilePixels]) -> Iterator[TilePixels]:
        for item in items:
            nodata_fraction[index[(item.tile.row, item.tile.col)]] = item.nodata_fraction
            yield item

    def skipped(item: TilePixels) -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, n)

    # Enough tiles in flight to fill the next batch while this one runs, and to
    # keep every reader thread busy; bounded whatever the scene size.
    depth = max(options.batch_size * 2, options.workers * 4)
    with TileReader(info, grid.tile) as reader, torch.inference_mode():
        items = record(read_ahead(reader, tiles, options.workers, depth))
        for out in classify_stream(items, runner, norm, options.batch_size, skipped):
            rows = [index[(t.row, t.col)] for t in out.tiles]
            probs[rows] = out.probs
            class_ids[rows] = out.probs.argmax(axis=1)
            done += len(rows)
            if progress is not None:
                progress(done, n)
    if progress is not None and n == 0:
        progress(0, 0)
    return TileResult(tiles, class_ids, probs, nodata_fraction), device, amp


def _footprints(info: SceneInfo, tiles: list[Tile]) -> list[Any]:
    """Tile windows as polygons in the scene CRS.

    All four corners go through the affine transform, so rotated or sheared
    grids give the right (non-rectangular in map units) footprint.
    """
    import shapely

    if not tiles:
        return []
    t = info.transform
    c0 = np.array([tile.window.col_off for tile in tiles], dtype=np.float64)
    r0 = np.array([tile.window.row_off for tile in tiles], dtype=np.float64)
    c1 = c0 + np.array([tile.window.width for tile in tiles], dtype=np.float64)
    r1 = r0 + np.array([tile.window.height for tile in tiles], dtype=np.float64)
    cols = np.stack([c0, c1, c1, c0, c0], axis=1)  # (n, 5) ring, clockwise in pixel space
    rows = np.stack([r0, r0, r1, r1, r0], axis=1)
    if t.determinant < 0:  # north-up flips orientation: keep exteriors counter-clockwise
        cols, rows = cols[:, ::-1], rows[:, ::-1]
    xs = t.a * cols + t.b * rows + t.c
    ys = t.d * cols + t.e * rows + t.f
    return list(shapely.polygons(np.stack([xs, ys], axis=2)))


def _tiles_frame(info: SceneInfo, result: TileResult, class_names: list[str]) -> Any:
    import geopandas as gpd

    keep = np.flatnonzero(result.class_ids != NODATA_CLASS)
    tiles = [result.tiles[i] for i in keep]
    probs = result.probs[keep]
    ids = result.class_ids[keep].astype(np.int32)
    columns: dict[str, Any] = {
        "class_id": ids,
        "class_name": [class_names[i] for i in ids],
        "confidence": probs.max(axis=1) if len(keep) else np.zeros(0, np.float32),
    }
    for j, name in enumerate(class_names):
        columns[f"p_{name}"] = probs[:, j]
    columns["row"] = np.array([t.row for t in tiles], dtype=np.int32)
    columns["col"] = np.array([t.col for t in tiles], dtype=np.int32)
    columns["nodata_fraction"] = result.nodata_fraction[keep]
    columns["padded"] = np.array([t.padded for t in tiles], dtype=bool)
    return gpd.GeoDataFrame(columns, geometry=_footprints(info, tiles), crs=info.crs)


def _write_raster(
    path: Path, info: SceneInfo, grid: TileGrid, result: TileResult, meta: ModelMeta
) -> None:
    from mscn_geo.io import ClassRasterWriter, class_colours

    rows, cols = grid.shape
    classes = result.class_ids.reshape(rows, cols)
    # GDAL would otherwise keep dirty blocks up to 5% of RAM (the whole raster).
    with (
        block_cache_bounded(info.width, 1, 1, STRIP_ROWS),
        ClassRasterWriter(
            path,
            width=info.width,
            height=info.height,
            crs=info.crs,
            transform=info.transform,
            class_names=meta.class_names,
            colours=class_colours(meta.class_names),
            nodata=NODATA_CLASS,
        ) as writer,
    ):
        from rasterio.windows import Window

        for y0 in range(0, info.height, STRIP_ROWS):
            y1 = min(y0 + STRIP_ROWS, info.height)
            writer.write(Window(0, y0, info.width, y1 - y0), grid.paint(classes, y0, y1))


#: ``predictor(info, grid, model, options, progress)``: per-tile results of every
#: tile of ``grid``, with the device and autocast dtype they were computed with.
Predictor = Callable[
    [SceneInfo, TileGrid, LoadedModel, ClassifyOptions, ProgressCallback | None],
    tuple[TileResult, torch.device, torch.dtype | None],
]


def classify_scene(
    scene: str | os.PathLike[str],
    model: LoadedModel,
    options: ClassifyOptions,
    progress: ProgressCallback | None = None,
    *,
    plan: ScenePlan | None = None,
    predictor: Predictor | None = None,
) -> SceneResult:
    """Classify every tile of ``scene`` and write ``<scene>.gpkg`` and ``<scene>_classes.tif``.

    Outputs are written under temporary names and renamed when complete, so an
    error or interruption leaves no partial file (hidden temporaries that a
    killed run left behind are removed first). A scene that is entirely
    nodata is not an error: it gives a GeoPackage with no polygons, an all-255
    raster and a warning. With ``options.resume`` finished tiles are kept in a
    journal (:mod:`mscn_geo.resume`) and a run started again continues from it.

    Args:
        progress: called as ``progress(tiles_done, tiles_total)``.
        plan: the scene's :func:`plan_scene` when the caller already made it.
        predictor: computes the per-tile results instead of :func:`predict_tiles`
            (:mod:`mscn_geo.distributed` runs them on a Dask cluster); the
            outputs are written by the same code either way.

    Raises:
        InputError, OptionError, OutputError (see :mod:`mscn_geo.errors`).
    """
    from mscn_geo.io import atomic_outputs, class_colours, output_paths, write_tiles_gpkg

    options.check()
    start = time.perf_counter()
    scene = Path(scene)
    if plan is None:
        plan = plan_scene(scene, model.meta, options)
    info, grid = plan.info, plan.grid
    warnings = list(plan.warnings)
    out_dir = Path(options.out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise OptionError(f"--out {out_dir} exists and is not a folder")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create the output folder {out_dir}: {exc.strerror}") from exc
    paths = output_paths(scene, out_dir)
    names = list(paths)
    meta = model.meta
    remove_stale_temporaries(list(paths.values()))
    journal = None
    overwrite = options.overwrite
    if options.resume:
        from mscn_geo.resume import Journal, journal_dir

        folder = journal_dir(scene, out_dir)
        # Outputs next to a journal are from the run being resumed (killed while
        # renaming them): they are replaced.
        overwrite = overwrite or folder.exists()
        if not overwrite:
            from mscn_geo.io.atomic import _check_destination

            _check_destination(list(paths.values()), overwrite=False)
        journal = Journal.open(folder, _fingerprint(scene, plan, model, options))
    with atomic_outputs(list(paths.values()), overwrite=overwrite) as temps:
        tmp = dict(zip(names, temps, strict=True))
        if journal is None:
            result, device, amp = (predictor or predict_tiles)(info, grid, model, options, progress)
        else:
            result, device, amp = _predict_resumable(info, grid, model, options, progress, journal)
        frame = _tiles_frame(info, result, meta.class_names)
        if frame.empty:
            warnings.append("scene is entirely nodata: no tile was classified")
        write_tiles_gpkg(tmp["gpkg"], frame, meta.class_names, class_colours(meta.class_names))
        _write_raster(tmp["raster"], info, grid, result, meta)
    if journal is not None:
        journal.remove()
    classified = len(frame)
    counts = {name: 0 for name in meta.class_names}
    for name in frame["class_name"]:
        counts[name] += 1
    return SceneResult(
        scene=scene,
        crs=_crs_name(info) or "none (pixel coordinates)",
        bands=list(info.band_indexes),
        tiles=len(grid),
        classified=classified,
        skipped=len(grid) - classified,
        padded=int(frame["padded"].sum()) if classified else 0,
        per_class=counts,
        seconds=time.perf_counter() - start,
        device=str(device),
        amp=amp_name(amp),
        model_path=str(model.path) if model.path else "<memory>",
        model_label=model.label,
        trained=meta.trained,
        outputs={k: Path(v) for k, v in paths.items() if k in ("gpkg", "raster")},
        warnings=warnings,
    )


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


def remove_stale_temporaries(finals: list[Path]) -> list[Path]:
    """Remove hidden temporaries of ``finals`` left by killed runs (their pid is gone).

    A run killed with SIGKILL cannot clean up; its temporaries
    (``.<stem>.<pid>.partial.<ext>`` and side files) would stay forever.
    """
    stems = {Path(f).stem for f in finals}
    removed = []
    for folder in {Path(f).parent for f in finals}:
        if not folder.is_dir():
            continue
        for entry in folder.iterdir():
            match = _TEMPORARY.match(entry.name)
            if match and match["stem"] in stems and not _pid_alive(int(match["pid"])):
                with contextlib.suppress(OSError):
                    entry.unlink()
                    removed.append(entry)
    return removed


def _fingerprint(
    scene: Path, plan: ScenePlan, model: LoadedModel, options: ClassifyOptions
) -> dict[str, Any]:
    from mscn_geo.resume import model_digest, scene_fingerprint

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


@dataclass(frozen=True)
class _TileSubset(TileGrid):
    """The grid, restricted to some of its tiles (one resume chunk)."""

    subset: tuple[Tile, ...] = ()

    def tiles(self) -> list[Tile]:
        return list(self.subset)


def _predict_resumable(
    info: SceneInfo,
    grid: TileGrid,
    model: LoadedModel,
    options: ClassifyOptions,
    progress: ProgressCallback | None,
    journal: Any,
) -> tuple[TileResult, torch.device, torch.dtype | None]:
    from mscn_geo.resume import ChunkResult

    tiles = grid.tiles()
    n, k = len(tiles), model.meta.num_classes
    class_ids = np.full(n, NODATA_CLASS, dtype=np.uint8)
    probs = np.full((n, k), np.nan, dtype=np.float32)
    nodata_fraction = np.ones(n, dtype=np.float32)
    size = _chunk_tiles(options)
    done_chunks: set[int] = set()
    for c, chunk in journal.chunks():
        class_ids[chunk.index] = chunk.class_ids
        probs[chunk.index] = chunk.probs
        nodata_fraction[chunk.index] = chunk.nodata_fraction
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
        subset = _TileSubset(grid.width, grid.height, grid.tile, grid.stride, tuple(tiles[lo:hi]))
        offset = done

        def chunk_progress(d: int, _total: int, offset: int = offset) -> None:
            if progress is not None:
                progress(offset + d, n)

        part, device, amp = predict_tiles(info, subset, model, options, chunk_progress)
        index = np.arange(lo, hi, dtype=np.int64)
        class_ids[index] = part.class_ids
        probs[index] = part.probs
        nodata_fraction[index] = part.nodata_fraction
        journal.save(c, ChunkResult(index, part.class_ids, part.probs, part.nodata_fraction))
        done += hi - lo
    return TileResult(tiles, class_ids, probs, nodata_fraction), device, amp


def predict_tile_rows(
    info: SceneInfo,
    grid: TileGrid,
    rows: range,
    model: LoadedModel,
    options: ClassifyOptions,
    progress: ProgressCallback | None = None,
) -> tuple[TileResult, torch.device, torch.dtype | None]:
    """:func:`predict_tiles` for the tiles of grid rows ``rows`` only (a block of a scene).

    The result's arrays are in grid order of those tiles; a distributed run
    (:mod:`mscn_geo.distributed`) merges the blocks of a scene.
    """
    subset = tuple(t for t in grid.tiles() if t.row in rows)
    part = _TileSubset(grid.width, grid.height, grid.tile, grid.stride, subset)
    return predict_tiles(info, part, model, options, progress)


#: Scenes up to this many pixels get an exact nodata-tile count in ``info``.
EXACT_COUNT_PIXELS = 64 * 2**20
_MASK_SAMPLE_SIDE = 2048


def estimate_nodata_tiles(info: SceneInfo, grid: TileGrid) -> tuple[int, bool]:
    """(tiles classify would skip as entirely nodata, whether that is an estimate).

    Exact (every tile's mask) up to :data:`EXACT_COUNT_PIXELS`; above, estimated
    from the mask read at most 2048 px on its long side (served by the overviews
    when the file has them), so a huge scene is never read whole.
    """
    if info.width * info.height <= EXACT_COUNT_PIXELS:
        return count_nodata_tiles(info, grid), False
    import rasterio
    from rasterio.errors import RasterioError

    from mscn_geo.errors import InputError

    factor = max(info.width, info.height) / _MASK_SAMPLE_SIDE
    shape = (max(1, round(info.height / factor)), max(1, round(info.width / factor)))
    try:
        with rasterio.open(info.path) as ds:
            masks = ds.read_masks(info.band_indexes, out_shape=(len(info.band_indexes), *shape))
    except RasterioError as exc:
        raise InputError(f"{info.path} is corrupt or unreadable ({exc})") from exc
    valid = masks.any(axis=0)
    sy, sx = shape[0] / info.height, shape[1] / info.width
    skipped = 0
    for tile in grid.tiles():
        w = tile.window
        r0, c0 = int(w.row_off * sy), int(w.col_off * sx)
        r1 = max(r0 + 1, int(np.ceil((w.row_off + w.height) * sy)))
        c1 = max(c0 + 1, int(np.ceil((w.col_off + w.width) * sx)))
        if not valid[r0:r1, c0:c1].any():
            skipped += 1
    return skipped, True


def count_nodata_tiles(info: SceneInfo, grid: TileGrid) -> int:
    """How many tiles classify would skip as entirely nodata (reads masks only)."""
    skipped = 0
    with TileReader(info, grid.tile) as reader:
        for tile in grid.tiles():
            if not reader.valid_mask(tile.window).any():
                skipped += 1
    return skipped


__all__ = [
    "ClassifyOptions",
    "SceneResult",
    "check_scene_list",
    "classify_scene",
    "count_nodata_tiles",
    "estimate_nodata_tiles",
    "plan_scene",
    "predict_tile_rows",
    "predict_tiles",
]


def check_scene_list(scenes: list[Path], out_dir: Path) -> None:
    """Refuse a scene list where two scenes would write the same outputs."""
    from mscn_geo.io import output_paths

    seen: dict[Path, Path] = {}
    for scene in scenes:
        gpkg = output_paths(Path(scene), Path(out_dir))["gpkg"]
        if gpkg in seen:
            raise OptionError(
                f"{seen[gpkg]} and {scene} would both write {gpkg}; classify them into "
                "different --out folders"
            )
        seen[gpkg] = Path(scene)
