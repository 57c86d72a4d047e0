"""Training chips from label polygons over scenes: ``mscn-geo chips``.

Every scene is cut on classify's tile grid and read by classify's
:class:`~mscn_geo.reader.TileReader` (same bands, scaling, masks, ``--resample``),
so a chip holds exactly the pixels classify would give the model for that
window. A window becomes a chip of class C when C's polygons cover at least
``min_cover`` of its valid pixels (pixel centres inside; another class at
``min_cover`` too, from overlapping polygons, makes it ambiguous and it is left
out).

Output folder (written under a temporary name and renamed when complete)::

    DIR/<class>/<scene>_r<row>_c<col>.tif   uint8 GeoTIFF chips (an ImageFolder)
    DIR/chips.gpkg                          chip footprints: class, scene, split, path
    DIR/chips.json                          how the chips were read, and the split

Train/validation split by spatial blocks: the map is divided into square
blocks of ``block_tiles`` x ``block_tiles`` tiles (in each scene's CRS, anchored
at its origin so scenes in one CRS share blocks); a chip belongs to the block
holding its centre. Blocks are visited in a seeded pseudo-random order and
one goes to validation while it brings a class still below its share
(``val_fraction`` of that class's chips) without overshooting any class by
more than half its share (a class without validation chips yet may take a
block of up to half its chips). Then every training chip that overlaps a
validation chip (in the labels' CRS, so overlapping scenes count too) is
dropped: no pixel of the ground is on both sides.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio

from mscn_geo.chip_options import ChipOptions
from mscn_geo.errors import InputError, OptionError
from mscn_geo.labels import LabelLayer, SceneLabels, read_labels, read_pixels_transform
from mscn_geo.models.checkpoint import ModelMeta
from mscn_geo.outputs import footprints
from mscn_geo.pipeline import read_ahead
from mscn_geo.plan import ScenePlan, plan_scene
from mscn_geo.reader import TileReader
from mscn_geo.tiling import Tile

__all__ = ["CHIPS_GPKG", "CHIPS_JSON", "ChipOptions", "ChipsResult", "make_chips"]

CHIPS_JSON = "chips.json"
CHIPS_GPKG = "chips.gpkg"
FORMAT = "mscn-geo-chips"
#: (scene, tiles done, tiles to look at)
ChipsProgress = Callable[[Path, int, int], None]


@dataclass
class _Chip:
    scene: int
    tile: Tile
    name: str  # class
    cover: float
    path: str  # relative to the chip folder
    footprint: Any  # shapely polygon, scene CRS
    block: str
    split: str = "train"


@dataclass
class ChipsResult:
    """Outcome of :func:`make_chips`; ``to_dict()`` is the ``--json`` summary."""

    out_dir: Path
    classes: list[str]
    counts: dict[str, dict[str, int]]
    scenes: list[dict[str, Any]]
    windows: int
    dropped_at_split: int
    ambiguous: int
    seconds: float
    warnings: list[str]

    @property
    def chips(self) -> int:
        return sum(c["train"] + c["val"] for c in self.counts.values())

    @property
    def chips_per_s(self) -> float:
        return self.chips / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "out": str(self.out_dir),
            "chips": self.chips,
            "classes": list(self.classes),
            "counts": {k: dict(v) for k, v in self.counts.items()},
            "scenes": list(self.scenes),
            "windows_examined": self.windows,
            "dropped_at_split": self.dropped_at_split,
            "ambiguous": self.ambiguous,
            "seconds": round(self.seconds, 3),
            "chips_per_s": round(self.chips_per_s, 2),
            "outputs": {
                "folder": str(self.out_dir),
                "gpkg": str(self.out_dir / CHIPS_GPKG),
                "json": str(self.out_dir / CHIPS_JSON),
            },
            "warnings": list(self.warnings),
        }


def make_chips(
    scenes: Sequence[str | os.PathLike[str]],
    meta: ModelMeta,
    options: ChipOptions,
    progress: ChipsProgress | None = None,
) -> ChipsResult:
    """Cut labelled chips from ``scenes`` into ``options.out_dir`` (see module doc).

    Args:
        meta: the model the chips are for (the one to fine-tune): its bands,
            tile size and pixel size decide how scenes are read, as for classify.
        progress: called as ``progress(scene, windows_done, windows_total)``.

    Raises:
        InputError: unreadable scenes or labels, labels without CRS, labels
            overlapping no scene, no chip, chips of one class only.
        OptionError: bad options, unknown class field or layer.
        OutputError: the folder exists (without ``overwrite``), is not ours to
            replace, or cannot be written. Nothing is left behind on any error.
    """
    from mscn_geo.io.atomic import atomic_folder

    start = time.perf_counter()
    options.check()
    paths = [Path(s) for s in scenes]
    if not paths:
        raise InputError("no scene given")
    _check_names(paths)
    labels = read_labels(options.labels, options.class_field, options.layer)
    warnings = list(labels.warnings)
    read = options.read_options()
    plans = [plan_scene(p, meta, read) for p in paths]  # every scene checked before any work
    per_scene = [labels.for_scene(plan.info.crs, _bounds(plan)) for plan in plans]
    if not any(len(s) for s in per_scene):
        raise InputError(
            f"the {len(labels.frame)} label polygon(s) of {labels.path} overlap none of the "
            f"{len(plans)} scene(s) (labels in {_crs_text(labels.crs)}, extent "
            f"{_extent_text(labels.frame.total_bounds)})"
        )
    for plan, scene_labels in zip(plans, per_scene, strict=True):
        warnings.extend(f"{plan.info.path.name}: {w}" for w in plan.warnings)
        if not len(scene_labels):
            warnings.append(f"{plan.info.path.name}: no label polygon overlaps it")
    if len({tuple(p.info.band_indexes) for p in plans}) > 1:
        used = ", ".join(f"{p.info.path.name} {p.info.band_indexes}" for p in plans)
        warnings.append(
            f"the scenes were read with different bands ({used}); chips.json records the first "
            "scene's: set bands=LIST to read them all alike"
        )
    out = Path(options.out_dir)
    with atomic_folder(out, overwrite=options.overwrite, marker=CHIPS_JSON) as tmp:
        chips: list[_Chip] = []
        windows = ambiguous = 0
        for index, (plan, scene_labels) in enumerate(zip(plans, per_scene, strict=True)):
            cut = _cut_scene(index, plan, scene_labels, tmp, options, progress)
            chips += cut.chips
            windows += cut.windows
            ambiguous += cut.ambiguous
        dropped = _split(chips, plans, labels, options)
        for chip in dropped:
            (tmp / chip.path).unlink()
        chips = [c for c in chips if c.split != "drop"]
        _check_classes(chips, labels)
        counts = _counts(chips)
        warnings += _count_warnings(counts, options)
        _write_gpkg(tmp / CHIPS_GPKG, chips, plans, labels)
        summary = _describe(plans, chips, meta, labels, options)
        (tmp / CHIPS_JSON).write_text(json.dumps(summary, indent=2) + "\n")
    return ChipsResult(
        out_dir=out,
        classes=sorted(counts),
        counts=counts,
        scenes=summary["scenes"],
        windows=windows,
        dropped_at_split=len(dropped),
        ambiguous=ambiguous,
        seconds=time.perf_counter() - start,
        warnings=warnings,
    )


def _check_names(paths: list[Path]) -> None:
    seen: dict[str, Path] = {}
    for path in paths:
        if path.stem in seen:
            raise OptionError(
                f"{seen[path.stem]} and {path} have the same name: their chips would clash; "
                "rename one"
            )
        seen[path.stem] = path


def _bounds(plan: ScenePlan) -> tuple[float, float, float, float]:
    from rasterio.transform import array_bounds

    info = plan.info
    return array_bounds(info.height, info.width, info.transform)


def _crs_text(crs: Any) -> str:
    return crs.to_string() if crs is not None else "no CRS"


def _extent_text(bounds: Sequence[float]) -> str:
    return ", ".join(f"{v:.6g}" for v in bounds)


@dataclass
class _Cut:
    chips: list[_Chip]
    windows: int
    ambiguous: int


def _cut_scene(
    index: int,
    plan: ScenePlan,
    labels: SceneLabels,
    folder: Path,
    options: ChipOptions,
    progress: ChipsProgress | None,
) -> _Cut:
    info, grid = plan.info, plan.grid
    if not len(labels):
        return _Cut([], 0, 0)
    tiles = grid.tiles()
    shapes = footprints(info, tiles)
    hit = labels.touching(shapes)
    candidates = [tiles[i] for i in hit]
    block = _block_size(plan, options.block_tiles)
    chips: list[_Chip] = []
    ambiguous = 0
    total = len(candidates)
    read = options.read
    crs_text = _crs_text(info.crs)
    with TileReader(info, grid.tile) as reader, rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
        workers = read.workers_for("cpu")  # no model here: reading is all the work
        items = read_ahead(reader, candidates, workers, max(4, workers * 4))
        for done, item in enumerate(items, start=1):
            if progress is not None:
                progress(info.path, done, total)
            if item.pixels is None or item.valid is None:
                continue  # entirely nodata
            footprint = shapes[hit[done - 1]]
            shape = item.valid.shape
            masks = labels.cover(
                footprint, read_pixels_transform(item.tile.window, info.transform, shape), shape
            )
            valid = item.valid
            n_valid = int(valid.sum())
            covers = {c: int((m & valid).sum()) / n_valid for c, m in masks.items()}
            winners = [c for c, v in covers.items() if v >= options.min_cover]
            if len(winners) != 1:
                ambiguous += len(winners) > 1
                continue
            name = winners[0]
            tile = item.tile
            rel = f"{name}/{info.path.stem}_r{tile.row:04d}_c{tile.col:04d}.tif"
            _write_chip(folder / rel, item.pixels, valid, info, tile, shape)
            centre = footprint.centroid
            bx, by = math.floor(centre.x / block), math.floor(centre.y / block)
            key = f"{crs_text}|{bx}|{by}"
            chips.append(_Chip(index, tile, name, covers[name], rel, footprint, key))
    if progress is not None and total == 0:
        progress(info.path, 0, 0)
    return _Cut(chips, total, ambiguous)


def _block_size(plan: ScenePlan, block_tiles: int) -> float:
    """Split-block edge in the scene's map units."""
    t = plan.info.transform
    pixel = math.sqrt(abs(t.a * t.e - t.b * t.d))
    return block_tiles * plan.grid.tile * pixel


def _write_chip(
    path: Path, pixels: np.ndarray, valid: np.ndarray, info: Any, tile: Tile, shape: tuple[int, int]
) -> None:
    path.parent.mkdir(exist_ok=True)
    bands, h, w = pixels.shape
    profile = {
        "driver": "GTiff",
        "width": w,
        "height": h,
        "count": bands,
        "dtype": "uint8",
        "crs": info.crs,
        "transform": read_pixels_transform(tile.window, info.transform, shape),
        "compress": "deflate",
    }
    with rasterio.open(path, "w", **profile) as dst:  # an internal mask: see _cut_scene
        dst.write(pixels)
        if not valid.all():
            dst.write_mask(valid.astype(np.uint8) * 255)


def _check_classes(chips: list[_Chip], labels: LabelLayer) -> None:
    found = sorted({c.name for c in chips})
    if not found:
        raise InputError(
            "no window is covered by one class for min_cover of its valid pixels: draw larger "
            "polygons, lower min_cover or use a smaller tile_size",
            field=("min_cover", "tile_size"),
        )
    if len(found) == 1:
        others = [c for c in labels.classes if c not in found]
        missing = f" ({', '.join(others)} gave none)" if others else ""
        raise InputError(
            f"only class {found[0]!r} has chips{missing}: a classifier needs at least two classes"
        )


def _hash(seed: int, key: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{seed}|{key}".encode(), digest_size=8).digest(), "big")


def _split(
    chips: list[_Chip], plans: list[ScenePlan], labels: LabelLayer, options: ChipOptions
) -> list[_Chip]:
    """Mark each chip ``train`` or ``val`` (see module doc); returns the chips dropped."""
    if options.val_fraction == 0:
        return []
    blocks: dict[str, Counter[str]] = {}
    for chip in chips:
        blocks.setdefault(chip.block, Counter())[chip.name] += 1
    totals = Counter(chip.name for chip in chips)
    target = {name: options.val_fraction * n for name, n in totals.items()}
    val: Counter[str] = Counter()
    chosen = set()
    for key in sorted(blocks, key=lambda k: (_hash(options.seed, k), k)):
        counts = blocks[key]
        helps = any(val[c] < target[c] for c in counts)
        # A class without validation chips may take a block of up to half its
        # chips: few large blocks would otherwise leave it unvalidated.
        fits = all(
            val[c] + n <= 1.5 * target[c] or (val[c] == 0 and n <= 0.5 * totals[c])
            for c, n in counts.items()
        )
        if helps and fits:
            chosen.add(key)
            val.update(counts)
    for chip in chips:
        chip.split = "val" if chip.block in chosen else "train"
    return _drop_overlaps(chips, plans, labels)


def _drop_overlaps(chips: list[_Chip], plans: list[ScenePlan], labels: LabelLayer) -> list[_Chip]:
    """Drop training chips that share ground with a validation chip."""
    import shapely

    val = [c for c in chips if c.split == "val"]
    if not val:
        return []
    common = _common_crs(plans) or labels.crs
    shapes = _footprints_in(chips, plans, common)
    val_index = [i for i, c in enumerate(chips) if c.split == "val"]
    tree = shapely.STRtree([shapes[i] for i in val_index])
    dropped = []
    for i, chip in enumerate(chips):
        if chip.split != "train":
            continue
        near = tree.query(shapes[i], predicate="intersects")
        area = shapes[i].area
        if any(shapes[i].intersection(shapes[val_index[j]]).area > 1e-6 * area for j in near):
            chip.split = "drop"
            dropped.append(chip)
    return dropped


def _common_crs(plans: list[ScenePlan]) -> Any:
    """The scenes' CRS when they all share one, else ``None``."""
    first = plans[0].info.crs
    return first if all(p.info.crs == first for p in plans) else None


def _footprints_in(chips: list[_Chip], plans: list[ScenePlan], crs: Any) -> list[Any]:
    """Chip footprints in ``crs``, in the order of ``chips``."""
    import geopandas

    frame = geopandas.GeoSeries([c.footprint for c in chips])
    out = [None] * len(chips)
    for index, plan in enumerate(plans):
        rows = [i for i, c in enumerate(chips) if c.scene == index]
        if not rows:
            continue
        part = geopandas.GeoSeries(frame.iloc[rows].values, crs=plan.info.crs)
        if plan.info.crs != crs:
            part = part.to_crs(crs)
        for i, shape in zip(rows, part.values, strict=True):
            out[i] = shape
    return out


def _counts(chips: list[_Chip]) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = {}
    for name in sorted({c.name for c in chips}):
        of = [c for c in chips if c.name == name]
        counts[name] = {
            "train": sum(c.split == "train" for c in of),
            "val": sum(c.split == "val" for c in of),
        }
    return counts


def _count_warnings(counts: dict[str, dict[str, int]], options: ChipOptions) -> list[str]:
    warnings = []
    for name, split in counts.items():
        n = split["train"] + split["val"]
        if n < options.min_chips:
            warnings.append(
                f"class {name!r} has only {n} chip(s) (fewer than {options.min_chips}): "
                "draw more or larger polygons"
            )
        if options.val_fraction > 0 and split["val"] == 0:
            warnings.append(
                f"class {name!r} has no validation chip: its chips lie in too few split blocks "
                "(draw polygons in more places or use block_tiles=1)"
            )
        if split["train"] == 0:
            warnings.append(f"class {name!r} has no training chip")
    return warnings


def _write_gpkg(path: Path, chips: list[_Chip], plans: list[ScenePlan], labels: LabelLayer) -> None:
    """Chip footprints in the scenes' CRS (the labels' CRS when the scenes' differ), styled."""
    import geopandas

    from mscn_geo.io import class_colours
    from mscn_geo.io.vector import write_polygon_layer

    crs = _common_crs(plans) or labels.crs
    frame = geopandas.GeoDataFrame(
        {
            "class_name": [c.name for c in chips],
            "scene": [str(plans[c.scene].info.path) for c in chips],
            "split": [c.split for c in chips],
            "path": [c.path for c in chips],
            "row": np.array([c.tile.row for c in chips], dtype=np.int32),
            "col": np.array([c.tile.col for c in chips], dtype=np.int32),
            "cover": np.array([c.cover for c in chips], dtype=np.float64),
        },
        geometry=_footprints_in(chips, plans, crs),
        crs=crs,
    )
    names = sorted({c.name for c in chips})
    write_polygon_layer(path, frame, "chips", names, class_colours(names))


def _describe(
    plans: list[ScenePlan],
    chips: list[_Chip],
    meta: ModelMeta,
    labels: LabelLayer,
    options: ChipOptions,
) -> dict[str, Any]:
    """``chips.json``: how the chips were read (for ``train``) and the split."""
    first = plans[0].info
    scenes = []
    for index, plan in enumerate(plans):
        info = plan.info
        size = meta.pixel_size_m if info.read_tile else plan.pixel_size_m
        scenes.append(
            {
                "path": str(info.path),
                "crs": _crs_text(info.crs),
                "bands": list(info.band_indexes),
                "scaling": info.scaling.to_dict() if info.scaling else None,
                "pixel_size_m": size,
                "chips": sum(c.scene == index and c.split != "drop" for c in chips),
            }
        )
    sizes = [s["pixel_size_m"] for s in scenes if s["pixel_size_m"]]
    tile = first.read_tile or plans[0].grid.tile
    return {
        "format": FORMAT,
        "format_version": 1,
        "bands": list(first.band_indexes),
        "band_names": list(meta.bands),
        "scaling": _common_scaling(plans),
        "pixel_size_m": float(np.median(sizes)) if sizes else None,
        "tile_size": tile,
        "classes": sorted({c.name for c in chips}),
        "split": {
            "train": sorted(c.path for c in chips if c.split == "train"),
            "val": sorted(c.path for c in chips if c.split == "val"),
        },
        "scenes": scenes,
        "labels": {
            "path": str(labels.path),
            "layer": labels.layer,
            "class_field": options.class_field,
            "crs": _crs_text(labels.crs),
        },
        "options": {
            "tile_size": plans[0].grid.tile,
            "stride": plans[0].grid.stride,
            "resample": bool(options.read.resample),
            "min_cover": options.min_cover,
            "val_fraction": options.val_fraction,
            "seed": options.seed,
            "block_tiles": options.block_tiles,
        },
    }


def _common_scaling(plans: list[ScenePlan]) -> dict[str, Any] | None:
    """The scaling every scene was read with; per-band medians when percentile stretches differ.

    ``None`` (8-bit data used as is) and ``fixed`` (``--scale``) are the same for
    every scene. Estimated stretches differ per scene; classify estimates one per
    scene too, so the median only describes them.
    """
    scalings = [p.info.scaling for p in plans]
    if all(s is None for s in scalings):
        return None
    first = next(s for s in scalings if s is not None)
    if all(s == first for s in scalings):
        return first.to_dict()
    done = [s for s in scalings if s is not None]
    return {
        "method": first.method,
        "low": [float(v) for v in np.median([s.low for s in done], axis=0)],
        "high": [float(v) for v in np.median([s.high for s in done], axis=0)],
    }
