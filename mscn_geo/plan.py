"""What classify will do with a scene: open and check it, lay the tile grid, give advice.

Also what ``mscn-geo info`` shows without classifying: the plan, and how many
tiles would be skipped as entirely nodata (:func:`estimate_nodata_tiles`).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mscn_geo.aggregate import check_stride
from mscn_geo.errors import InputError, OptionError, explain
from mscn_geo.models.checkpoint import ModelMeta
from mscn_geo.options import ClassifyOptions
from mscn_geo.reader import SceneInfo, TileReader, open_scene, parse_bands
from mscn_geo.tiling import MIN_TILE, TileGrid, check_tiling

__all__ = [
    "EXACT_COUNT_PIXELS",
    "ScenePlan",
    "check_scene_list",
    "count_nodata_tiles",
    "crs_name",
    "estimate_nodata_tiles",
    "pixel_size_m",
    "pixel_size_warnings",
    "plan_scene",
]

#: Scenes up to this many pixels get an exact nodata-tile count in ``info``.
EXACT_COUNT_PIXELS = 64 * 2**20
#: Above it, the validity mask is read at most this many pixels on its long side.
MASK_SAMPLE_SIDE = 2048


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
            "crs": crs_name(info),
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
            "padded": grid.padded,
            "warnings": list(self.warnings),
        }


def crs_name(info: SceneInfo) -> str | None:
    """The scene CRS as text (``EPSG:32633`` or WKT); ``None`` without CRS."""
    return None if info.crs is None else info.crs.to_string()


def plan_scene(
    scene: str | os.PathLike[str], meta: ModelMeta, options: ClassifyOptions
) -> ScenePlan:
    """Open and check ``scene`` and lay the tile grid.

    Reads the header, one pixel, and for non-uint8 data the sample of the
    scaling estimate (overviews or a fixed set of windows); never every tile.
    With ``options.aoi`` the area of interest is read too (``info.aoi``).
    """
    tile = meta.tile_size if options.tile_size is None else options.tile_size
    stride = tile if options.stride is None else options.stride
    check_tiling(tile, stride)
    check_stride(tile, stride)  # the map's cells are S x S: T/S of them per tile side
    info = open_scene(
        scene,
        meta.bands,
        # Default: the bands and scaling the model's training chips were read with.
        parse_bands(options.bands) or meta.scene_bands,
        scale=options.scale if options.scale is not None else meta.scene_scaling(),
        allow_no_crs=options.allow_no_crs,
    )
    warnings = list(info.warnings)
    if options.aoi is not None:
        from mscn_geo.aoi import read_aoi
        from mscn_geo.landuse import scene_footprint

        footprint = scene_footprint(info.transform, info.width, info.height)
        info.aoi = read_aoi(options.aoi, info.crs, footprint)
    if info.crs is None:
        warnings.append(no_crs_warning(info))
    size_m = pixel_size_m(info)
    window, window_stride = tile, stride
    if options.resample:
        if size_m is None or not meta.pixel_size_m:
            raise OptionError(
                f"resample=True needs the scene's pixel size in metres; {info.path} has no "
                "usable CRS",
                field="resample",
            )
        scale = meta.pixel_size_m / size_m  # scene pixels per model pixel
        cells = tile // stride  # keep whole cells per tile in scene pixels too
        window = cells * max(1, round(tile * scale / cells))
        window_stride = window // cells
        if window < MIN_TILE:
            raise OptionError(
                f"resample=True cannot help: {_does_not_fit(size_m, meta, tile)}",
                field="resample",
            )
        if window != tile:
            info.read_tile, info.read_scale = tile, window / tile
    grid = TileGrid(info.width, info.height, window, window_stride)
    if tile != meta.tile_size:
        warnings.append(f"tile size {tile} px differs from the model's {meta.tile_size} px")
    if grid.padded:
        if not options.pad:
            raise OptionError(
                f"tile size {window} px is larger than the scene ({info.width}x{info.height} px)"
                " with padding off (pad=False); use a smaller tile_size or allow padding",
                field=("pad", "tile_size"),
            )
        warnings.append(
            f"scene ({info.width}x{info.height} px) is smaller than one {window} px tile: "
            "the tile is padded (padded = true)"
        )
    if not options.resample:
        warnings.extend(pixel_size_warnings(size_m, meta, tile))
    if options.aoi is not None:
        from mscn_geo.aoi import read_aoi
        from mscn_geo.landuse import scene_footprint

        footprint = scene_footprint(info.transform, info.width, info.height)
        info.aoi = read_aoi(options.aoi, info.crs, footprint)
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


def pixel_size_warnings(size: float | None, meta: ModelMeta, tile: int | None = None) -> list[str]:
    """Advice when the scene's pixel size (metres) is far from the model's.

    The advice is one that works: ``resample=True`` only where the resampled
    window is a usable tile (at least :data:`~mscn_geo.tiling.MIN_TILE` scene
    pixels); where it is not, the warning says the model does not fit the
    imagery and what would.
    """
    if size is None or not meta.pixel_size_m:
        return []
    ratio = size / meta.pixel_size_m
    if 0.5 <= ratio <= 2:
        return []
    tile = meta.tile_size if tile is None else tile
    window = round(tile * meta.pixel_size_m / size)
    times = f"{ratio:.0f}" if ratio >= 10 else f"{ratio:.2g}"
    far = f"pixel size {size:.3g} m is {times}x the model's {meta.pixel_size_m:g} m"
    if window < MIN_TILE:
        return [f"{far}: classes are not meaningful: {_does_not_fit(size, meta, tile)}"]
    advice = (
        f"{far}: classes may be unreliable; pass resample=True to read tiles at the "
        f"model's pixel size ({window} px windows resampled to {tile} px)"
    )
    if ratio > 2:  # upsampled windows are blurrier than what the model learnt from
        advice += f"; {_a_model_that_fits(size, 'would fit better')}"
    return [advice]


def _does_not_fit(size: float, meta: ModelMeta, tile: int) -> str:
    window = round(tile * meta.pixel_size_m / size)
    return (
        f"this model does not fit {size:.3g} m imagery (a {tile} px tile at its "
        f"{meta.pixel_size_m:g} m covers {tile * meta.pixel_size_m:g} m, only {window} pixels "
        f"of this scene, and at least {MIN_TILE} are needed); "
        + _a_model_that_fits(size, "would fit")
    )


def _a_model_that_fits(size: float, verb: str) -> str:
    return (
        f"a model trained on chips of about {size:.3g} m pixels {verb}: cut them from such "
        "scenes with `mscn-geo chips` and fine-tune the bundled model on them with "
        "`mscn-geo train --init bundled`"
    )


def no_crs_warning(info: SceneInfo) -> str:
    """What a scene without CRS gives: outputs without CRS, in the scene's own coordinates."""
    if info.transform.is_identity:
        where = "pixel coordinates (x = column, y = row, from the top left corner)"
    else:
        where = "the scene's geotransform coordinates (whatever units they are in)"
    return f"scene has no CRS: outputs have none either; their coordinates are {where}"


def estimate_nodata_tiles(info: SceneInfo, grid: TileGrid) -> tuple[int, bool]:
    """(tiles classify would skip as entirely nodata, whether that is an estimate).

    Exact (every tile's mask) up to :data:`EXACT_COUNT_PIXELS`; above, estimated
    from the mask read at most :data:`MASK_SAMPLE_SIDE` px on its long side
    (served by the overviews when the file has them), so a huge scene is never
    read whole.
    """
    if info.width * info.height <= EXACT_COUNT_PIXELS:
        return count_nodata_tiles(info, grid), False
    import rasterio
    from rasterio.errors import RasterioError

    factor = max(info.width, info.height) / MASK_SAMPLE_SIDE
    shape = (max(1, round(info.height / factor)), max(1, round(info.width / factor)))
    try:
        with rasterio.open(info.path) as ds:
            masks = ds.read_masks(info.band_indexes, out_shape=(len(info.band_indexes), *shape))
    except RasterioError as exc:
        raise InputError(f"{info.path} is corrupt or unreadable ({explain(exc)})") from exc
    valid = masks.any(axis=0)
    sy, sx = shape[0] / info.height, shape[1] / info.width
    skipped = 0
    for tile in grid.iter_tiles():
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
        for tile in grid.iter_tiles():
            if not reader.valid_mask(tile.window).any():
                skipped += 1
    return skipped


def check_scene_list(scenes: list[Path], out_dir: Path) -> None:
    """Refuse a scene list where two scenes would write the same outputs."""
    from mscn_geo.io import output_paths

    seen: dict[Path, Path] = {}
    for scene in scenes:
        gpkg = output_paths(scene, Path(out_dir))["gpkg"]
        if gpkg in seen:
            raise OptionError(
                f"{seen[gpkg]} and {scene} would both write {gpkg}; classify them into "
                "different out_dir folders",
                field="out_dir",
            )
        seen[gpkg] = scene
