"""Land-use polygons: dissolved connected class regions of the cell grid, read back."""

from __future__ import annotations

from collections import deque
from pathlib import Path

import geopandas
import numpy as np
import pyproj
import pytest
import shapely
from affine import Affine
from shapely.geometry import box

from mscn_geo.io import class_colours, read_layer_styles, write_landuse_layer, write_tiles_gpkg
from mscn_geo.landuse import NODATA_CELL, landuse_frame, scene_footprint
from tests.io.test_vector import make_tiles

NAMES = ["forest", "river", "denseresidential"]
COLOURS = class_colours(NAMES)
CELL = 64
SCENE = Affine(0.5, 0.0, 500_000.0, 0.0, -0.5, 5_000_000.0)


def regions(classes: np.ndarray, n_classes: int) -> list[tuple[int, list[tuple[int, int]]]]:
    """Connected (4-neighbour) regions of equal class, by breadth-first search."""
    seen = np.zeros(classes.shape, bool)
    found = []
    for start in zip(*np.nonzero(classes < n_classes), strict=True):
        if seen[start]:
            continue
        value, cells, queue = classes[start], [], deque([start])
        seen[start] = True
        while queue:
            r, c = queue.popleft()
            cells.append((r, c))
            for nr, nc in ((r + 1, c), (r - 1, c), (r, c + 1), (r, c - 1)):
                inside = 0 <= nr < classes.shape[0] and 0 <= nc < classes.shape[1]
                if inside and not seen[nr, nc] and classes[nr, nc] == value:
                    seen[nr, nc] = True
                    queue.append((nr, nc))
        found.append((int(value), cells))
    return found


def random_cells(rows: int = 14, cols: int = 17, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    # Blocky classes (2x2 cells) plus noise, so regions of several shapes and holes occur.
    classes = rng.integers(0, 3, (rows // 2 + 1, cols // 2 + 1)).repeat(2, 0).repeat(2, 1)
    classes = classes[:rows, :cols].astype(np.uint8)
    flip = rng.random((rows, cols)) < 0.15
    classes[flip] = rng.integers(0, 3, int(flip.sum()))
    classes[rng.random((rows, cols)) < 0.05] = NODATA_CELL
    confidence = rng.uniform(0.3, 1.0, (rows, cols))
    confidence[classes == NODATA_CELL] = np.nan
    return classes, confidence


def write_and_read(path: Path, frame: geopandas.GeoDataFrame) -> geopandas.GeoDataFrame:
    write_tiles_gpkg(path, make_tiles().iloc[:0], NAMES, COLOURS)
    write_landuse_layer(path, frame, NAMES, COLOURS)
    return geopandas.read_file(path, layer="landuse")


def test_union_of_polygons_is_union_of_classified_cells(tmp_path: Path) -> None:
    classes, confidence = random_cells()
    rows, cols = classes.shape
    # The scene ends inside the last cell row/column: cells are cut at its edge.
    width, height = cols * CELL - 20, rows * CELL - 37
    footprint = scene_footprint(SCENE, width, height)
    frame = landuse_frame(
        classes, confidence, SCENE @ Affine.scale(CELL), "EPSG:32633", NAMES, clip=footprint
    )
    back = write_and_read(tmp_path / "scene.gpkg", frame)
    assert back.crs == "EPSG:32633"
    assert list(back.columns) == ["class_id", "class_name", "area_m2", "confidence", "geometry"]
    assert set(back.geom_type) == {"Polygon"}
    assert back.is_valid.all()

    cell_area = CELL * CELL * 0.25
    for class_id in range(3):
        r, c = np.nonzero(classes == class_id)
        cells = [
            box(500_000 + 32.0 * x, 5_000_000 - 32.0 * (y + 1), 500_000 + 32.0 * (x + 1),
                5_000_000 - 32.0 * y)
            for y, x in zip(r, c, strict=True)
        ]  # fmt: skip
        expected = shapely.intersection(shapely.union_all(cells), footprint)
        got = shapely.union_all(back.geometry[back.class_id == class_id].values)
        assert shapely.symmetric_difference(expected, got).area < 1e-6 * cell_area
        # Regions of one class never overlap.
        assert back.geometry[back.class_id == class_id].area.sum() == pytest.approx(got.area)
    assert (back.class_name == [NAMES[i] for i in back.class_id]).all()
    # area_m2 is the planar area (metres): the sum is the classified part of the footprint.
    assert back.area_m2.to_numpy() == pytest.approx(back.area.to_numpy())
    nodata = scene_footprint(SCENE, width, height).area - back.area.sum()
    r, c = np.nonzero(classes == NODATA_CELL)
    cut_w = np.where(c == cols - 1, CELL - 20, CELL)
    cut_h = np.where(r == rows - 1, CELL - 37, CELL)
    assert nodata == pytest.approx(float((cut_w * cut_h).sum()) * 0.25)


def test_one_feature_per_connected_region_with_its_mean_confidence(tmp_path: Path) -> None:
    classes, confidence = random_cells(seed=11)
    frame = landuse_frame(classes, confidence, SCENE @ Affine.scale(CELL), "EPSG:32633", NAMES)
    back = write_and_read(tmp_path / "scene.gpkg", frame)
    expected = regions(classes, len(NAMES))
    assert len(back) == len(expected)
    assert sorted(back.class_id.value_counts().items()) == sorted(
        {k: sum(1 for v, _ in expected if v == k) for k in range(3)}.items()
    )
    # Each region's polygon holds exactly its cells' centres, and its confidence is their mean.
    for value, cells in expected:
        ys, xs = zip(*cells, strict=True)
        centres = shapely.points([SCENE @ ((x + 0.5) * CELL, (y + 0.5) * CELL) for y, x in cells])
        hits = back[back.geometry.contains(centres[0])]
        assert len(hits) == 1 and hits.class_id.iloc[0] == value
        assert shapely.contains(hits.geometry.iloc[0], centres).all()
        assert hits.area.iloc[0] == pytest.approx(len(cells) * CELL * CELL * 0.25)
        assert hits.confidence.iloc[0] == pytest.approx(np.mean(confidence[ys, xs]))


def test_geographic_areas_are_geodesic(tmp_path: Path) -> None:
    classes = np.array([[0, 0, 1], [0, 1, 1]], np.uint8)
    scene = Affine(0.0001, 0, 10.0, 0, -0.0001, 60.0)
    frame = landuse_frame(classes, np.ones((2, 3)), scene @ Affine.scale(100), "EPSG:4326", NAMES)
    back = write_and_read(tmp_path / "scene.gpkg", frame)
    geod = pyproj.Geod(ellps="WGS84")
    for geometry, area in zip(back.geometry, back.area_m2, strict=True):
        assert area == pytest.approx(abs(geod.geometry_area_perimeter(geometry)[0]), rel=1e-9)
    # About 0.01 degree squares at 60 N: 1113 m x 556 m each, three per class.
    assert back.area_m2.sum() == pytest.approx(6 * 1113.2 * 556.6, rel=0.01)


def test_landuse_layer_has_its_own_style_next_to_tiles(tmp_path: Path) -> None:
    classes, confidence = random_cells()
    frame = landuse_frame(classes, confidence, SCENE @ Affine.scale(CELL), "EPSG:32633", NAMES)
    path = tmp_path / "scene.gpkg"
    write_and_read(path, frame)
    styles = {row["f_table_name"]: row for row in read_layer_styles(path)}
    assert set(styles) == {"tiles", "landuse"}
    assert styles["landuse"]["useAsDefault"] == 1
    assert 'attr="class_name"' in styles["landuse"]["styleQML"]
    for name, colour in zip(NAMES, COLOURS, strict=True):
        assert f'label="{name}"' in styles["landuse"]["styleQML"]
        assert ",".join(map(str, colour)) + ",255" in styles["landuse"]["styleQML"]


def test_all_nodata_gives_an_empty_layer(tmp_path: Path) -> None:
    classes = np.full((3, 4), NODATA_CELL, np.uint8)
    frame = landuse_frame(classes, np.full((3, 4), np.nan), SCENE, "EPSG:32633", NAMES)
    back = write_and_read(tmp_path / "scene.gpkg", frame)
    assert len(back) == 0
