"""What a classified scene becomes: tile footprints, the tiles GeoDataFrame and the
run's summary (:class:`SceneResult`). The rasters are written while the model
runs (:mod:`mscn_geo.map_writer`), the other map products after it
(:mod:`mscn_geo.products`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mscn_geo.predict import NODATA_CLASS, TileResult
from mscn_geo.reader import SceneInfo
from mscn_geo.tiling import Tile
from mscn_geo.uncertainty import UNCERTAIN_CLASS, UNCERTAIN_NAME, label

__all__ = ["SceneResult", "footprints", "tiles_frame"]


@dataclass
class SceneResult:
    """Outcome of :func:`~mscn_geo.classify.classify_scene`; ``to_dict()``: the JSON summary."""

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
    backend: str
    model_path: str
    model_label: str
    trained: bool
    outputs: dict[str, Path]
    warnings: list[str]
    #: Tiles taken from a resume journal (finished by an earlier, interrupted run).
    from_journal: int = 0
    #: Tiles classified by this run; ``None``: all of ``classified``.
    computed: int | None = None
    areas: dict[str, Any] | None = None  # :meth:`mscn_geo.areas.SceneAreas.to_dict`
    landuse_polygons: int = 0

    @property
    def tiles_per_s(self) -> float:
        """Tiles classified per second by this run (tiles from a journal not counted)."""
        computed = self.classified if self.computed is None else self.computed
        return computed / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            # Absolute paths: a summary is read by other programs, from other folders.
            "scene": str(Path(self.scene).absolute()),
            "crs": self.crs,
            "bands": list(self.bands),
            "tiles": self.tiles,
            "classified": self.classified,
            "skipped": self.skipped,
            "padded": self.padded,
            "from_journal": self.from_journal,
            "per_class": dict(self.per_class),
            "seconds": round(self.seconds, 3),
            "tiles_per_s": round(self.tiles_per_s, 2),
            "device": self.device,
            "amp": self.amp,
            "backend": self.backend,
            "model": {"path": self.model_path, "label": self.model_label, "trained": self.trained},
            "outputs": {k: str(Path(v).absolute()) for k, v in self.outputs.items()},
            "areas": self.areas,
            "landuse_polygons": self.landuse_polygons,
            "warnings": list(self.warnings),
        }


def footprints(info: SceneInfo, tiles: list[Tile]) -> list[Any]:
    """Tile windows as shapely polygons in the scene CRS.

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


def tiles_frame(
    info: SceneInfo,
    result: TileResult,
    class_names: list[str],
    min_confidence: float | None = None,
) -> Any:
    """The classified tiles (skipped ones left out) as a GeoDataFrame in the scene CRS.

    Columns: ``class_id``, ``class_name``, ``confidence``, ``p_<class>`` per class,
    ``row``, ``col``, ``nodata_fraction``, ``padded``, and the tile footprint
    (``margin`` and ``entropy`` are added when written). Tiles below
    ``min_confidence`` are ``uncertain`` (class id 254).
    """
    import geopandas as gpd

    keep = np.flatnonzero(result.class_ids != NODATA_CLASS)
    tiles = [result.tiles[i] for i in keep]
    probs = result.probs[keep]
    ids = label(probs, min_confidence).astype(np.int32)
    names = {**dict(enumerate(class_names)), UNCERTAIN_CLASS: UNCERTAIN_NAME}
    columns: dict[str, Any] = {
        "class_id": ids,
        "class_name": [names[i] for i in ids],
        "confidence": probs.max(axis=1) if len(keep) else np.zeros(0, np.float32),
    }
    for j, name in enumerate(class_names):
        columns[f"p_{name}"] = probs[:, j]
    columns["row"] = np.array([t.row for t in tiles], dtype=np.int32)
    columns["col"] = np.array([t.col for t in tiles], dtype=np.int32)
    columns["nodata_fraction"] = result.nodata_fraction[keep]
    columns["padded"] = np.array([t.padded for t in tiles], dtype=bool)
    return gpd.GeoDataFrame(columns, geometry=footprints(info, tiles), crs=info.crs)
