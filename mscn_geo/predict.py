"""Classify a scene: tiles in, GeoPackage polygons and a class raster out.

Memory stays bounded whatever the scene size: tiles are read by a few threads
a bounded distance ahead of the model, only per-tile results (class and
probabilities, a few bytes each) are kept, and the class raster is written in
strips from those.
"""

from __future__ import annotations

import math
import os
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mscn_geo.device import amp_name, autocast_dtype, resolve_device
from mscn_geo.errors import OptionError
from mscn_geo.models.checkpoint import LoadedModel, ModelMeta
from mscn_geo.reader import SceneInfo, TilePixels, TileReader, open_scene, parse_bands
from mscn_geo.tiling import Tile, TileGrid

ProgressCallback = Callable[[int, int], None]
NODATA_CLASS = 255
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

    def check(self) -> None:
        if self.batch_size < 1:
            raise OptionError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.workers < 0:
            raise OptionError(f"--workers must be 0 or more, got {self.workers}")


@dataclass
class ScenePlan:
    """What classify will do with a scene (also what ``mscn-geo info`` shows)."""

    info: SceneInfo
    grid: TileGrid
    warnings: list[str]

    def to_dict(self) -> dict[str, Any]:
        info, grid = self.info, self.grid
        rows, cols = grid.shape
        return {
            "scene": str(info.path),
            "width": info.width,
            "height": info.height,
            "bands": info.count,
            "dtype": info.dtype,
            "crs": info.crs.to_string(),
            "pixel_size": list(info.res),
            "nodata": info.nodata,
            "bands_used": info.band_indexes,
            "tile_size": grid.tile,
            "stride": grid.stride,
            "tile_rows": rows,
            "tile_cols": cols,
            "tiles": len(grid),
            "padded": grid.tiles()[0].padded,
            "warnings": list(self.warnings),
        }


def plan_scene(
    scene: str | os.PathLike[str], meta: ModelMeta, options: ClassifyOptions
) -> ScenePlan:
    """Open and check ``scene`` and lay the tile grid; reads no pixels but one."""
    tile = meta.tile_size if options.tile_size is None else options.tile_size
    stride = tile if options.stride is None else options.stride
    info = open_scene(scene, meta.bands, parse_bands(options.bands))
    grid = TileGrid(info.width, info.height, tile, stride)
    warnings = list(info.warnings)
    if tile != meta.tile_size:
        warnings.append(f"tile size {tile} px differs from the model's {meta.tile_size} px")
    if grid.tiles()[0].padded:
        warnings.append(
            f"scene ({info.width}x{info.height} px) is smaller than one {tile} px tile: "
            "tiles are padded"
        )
    warnings.extend(_pixel_size_warnings(info, meta))
    return ScenePlan(info, grid, warnings)


def _pixel_size_warnings(info: SceneInfo, meta: ModelMeta) -> list[str]:
    if not info.crs.is_projected or not meta.pixel_size_m:
        return []
    try:
        metres = info.crs.linear_units_factor[1]
    except Exception:  # CRS without linear units
        return []
    size = math.sqrt(abs(info.res[0] * info.res[1])) * metres
    ratio = size / meta.pixel_size_m
    if 0.5 <= ratio <= 2:
        return []
    return [
        f"pixel size {size:.3g} m is far from the model's {meta.pixel_size_m:g} m: "
        "classes may be unreliable"
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


def _read_ahead(
    reader: TileReader, tiles: list[Tile], workers: int, depth: int
) -> Iterator[TilePixels]:
    """Read ``tiles`` in order, up to ``depth`` tiles ahead of the consumer."""
    if workers == 0:
        for tile in tiles:
            yield reader.read(tile)
        return
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mscn-geo-read")
    pending: deque[Future[TilePixels]] = deque()
    todo = iter(tiles)
    try:
        for tile in todo:
            pending.append(pool.submit(reader.read, tile))
            if len(pending) >= depth:
                break
        while pending:
            done = pending.popleft().result()
            nxt = next(todo, None)
            if nxt is not None:
                pending.append(pool.submit(reader.read, nxt))
            yield done
    finally:
        for fut in pending:
            fut.cancel()
        pool.shutdown(wait=True)


class _Normaliser:
    """uint8 tiles + validity -> normalised float batch on the device."""

    def __init__(self, meta: ModelMeta, device: torch.device) -> None:
        self.device = device
        self.mean = torch.tensor(meta.mean, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(meta.std, device=device).view(1, -1, 1, 1)

    def __call__(self, pixels: list[np.ndarray], valid: list[np.ndarray]) -> torch.Tensor:
        x = torch.from_numpy(np.stack(pixels))
        v = torch.from_numpy(np.stack(valid))
        if self.device.type == "cuda":
            x, v = x.pin_memory(), v.pin_memory()
        x = x.to(self.device, non_blocking=True)
        v = v.to(self.device, non_blocking=True)
        x = (x.float() / 255.0 - self.mean) / self.std
        # Nodata and padding become 0 after normalisation, i.e. the band mean.
        return x * v.unsqueeze(1)


def predict_tiles(
    info: SceneInfo,
    grid: TileGrid,
    model: LoadedModel,
    options: ClassifyOptions,
    progress: ProgressCallback | None = None,
) -> tuple[TileResult, torch.device, torch.dtype | None]:
    """Run the model over every tile of ``grid``; returns per-tile results."""
    device = resolve_device(options.device)
    amp = autocast_dtype(device, options.amp)
    net = model.model.eval().to(device)
    if device.type == "cuda":
        net = net.to(memory_format=torch.channels_last)
    norm = _Normaliser(model.meta, device)
    tiles = grid.tiles()
    n, k = len(tiles), model.meta.num_classes
    class_ids = np.full(n, NODATA_CLASS, dtype=np.uint8)
    probs = np.full((n, k), np.nan, dtype=np.float32)
    nodata_fraction = np.ones(n, dtype=np.float32)
    index = {(t.row, t.col): i for i, t in enumerate(tiles)}
    done = 0

    def run(batch: list[TilePixels]) -> None:
        x = norm([b.pixels for b in batch], [b.valid for b in batch])  # type: ignore[misc]
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            logits = net(x)
        p = torch.softmax(logits.float(), dim=1).cpu().numpy()
        rows = [index[(b.tile.row, b.tile.col)] for b in batch]
        probs[rows] = p
        class_ids[rows] = p.argmax(axis=1)

    batch: list[TilePixels] = []
    depth = max(options.batch_size * 2, options.workers * 4)
    with TileReader(info, grid.tile) as reader, torch.inference_mode():
        for item in _read_ahead(reader, tiles, options.workers, depth):
            nodata_fraction[index[(item.tile.row, item.tile.col)]] = item.nodata_fraction
            if item.pixels is None:
                done += 1
            else:
                batch.append(item)
                if len(batch) == options.batch_size:
                    run(batch)
                    done += len(batch)
                    batch = []
            if progress is not None and (not batch or item.pixels is None):
                progress(done, n)
        if batch:
            run(batch)
            done += len(batch)
        if progress is not None:
            progress(done, n)
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
    with ClassRasterWriter(
        path,
        width=info.width,
        height=info.height,
        crs=info.crs,
        transform=info.transform,
        class_names=meta.class_names,
        colours=class_colours(meta.class_names),
        nodata=NODATA_CLASS,
    ) as writer:
        from rasterio.windows import Window

        for y0 in range(0, info.height, STRIP_ROWS):
            y1 = min(y0 + STRIP_ROWS, info.height)
            writer.write(Window(0, y0, info.width, y1 - y0), grid.paint(classes, y0, y1))


def classify_scene(
    scene: str | os.PathLike[str],
    model: LoadedModel,
    options: ClassifyOptions,
    progress: ProgressCallback | None = None,
) -> SceneResult:
    """Classify every tile of ``scene`` and write ``<scene>.gpkg`` and ``<scene>_classes.tif``.

    Outputs are written under temporary names and renamed when complete, so an
    error or interruption leaves no partial file. A scene that is entirely
    nodata is not an error: it gives a GeoPackage with no polygons, an all-255
    raster and a warning.

    Args:
        progress: called as ``progress(tiles_done, tiles_total)``.

    Raises:
        InputError, OptionError, OutputError (see :mod:`mscn_geo.errors`).
    """
    from mscn_geo.io import atomic_outputs, class_colours, output_paths, write_tiles_gpkg

    options.check()
    start = time.perf_counter()
    scene = Path(scene)
    plan = plan_scene(scene, model.meta, options)
    info, grid = plan.info, plan.grid
    warnings = list(plan.warnings)
    out_dir = Path(options.out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise OptionError(f"--out {out_dir} exists and is not a folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = output_paths(scene, out_dir)
    names = list(paths)
    meta = model.meta
    with atomic_outputs(list(paths.values()), overwrite=options.overwrite) as temps:
        tmp = dict(zip(names, temps, strict=True))
        result, device, amp = predict_tiles(info, grid, model, options, progress)
        frame = _tiles_frame(info, result, meta.class_names)
        if frame.empty:
            warnings.append("scene is entirely nodata: no tile was classified")
        write_tiles_gpkg(tmp["gpkg"], frame, meta.class_names, class_colours(meta.class_names))
        _write_raster(tmp["raster"], info, grid, result, meta)
    classified = len(frame)
    counts = {name: 0 for name in meta.class_names}
    for name in frame["class_name"]:
        counts[name] += 1
    return SceneResult(
        scene=scene,
        crs=info.crs.to_string(),
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
    "plan_scene",
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
