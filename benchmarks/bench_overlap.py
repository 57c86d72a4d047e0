"""Map accuracy of overlapping tiles: pixel accuracy of ``mscn-geo classify``'s class raster.

The scene is built from UC Merced *validation* images of the bundled model's
split (stratified 64 train / 16 validation per class, seed 0; the checkpoint's
``training_data`` and ``scripts/train_default_model.py``): R x R class regions
of 2 x 2 images (512 x 512 px at 0.3 m), each a different class picked with a
fixed seed from 4 validation images of its class, inside a nodata margin of
half a tile (128 px). Region boundaries are therefore offset by half a tile
from the tile grid: every stride-T tile straddles regions. Accuracy counts the
region pixels (the margin is nodata in the scene and in the map).

Each configuration runs ``mscn-geo classify`` in a child process (``--json``)
and compares its class raster with the known class of every pixel. The tiles
layer of the same run is then aggregated again with every ``--overlap-weight``
by :class:`~mscn_geo.aggregate.OverlapAggregator` (no model run: the same
tiles, so the weightings are compared exactly); for the run's own weighting
this must reproduce the raster's accuracy, which is checked.

    python benchmarks/bench_overlap.py --out benchmarks/results/overlap_cpu.json
    python benchmarks/bench_overlap.py --regions 1 --configs T        # smoke

UC Merced stays out of the repo: without ``../shared/data/ucmerced`` this exits
with a message.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import ROOT, finish, machine

UCMERCED = ROOT.parent / "shared" / "data" / "ucmerced"
IMAGE = 256  # UC Merced images (a few are a pixel or two smaller: resized)
REGION = 2 * IMAGE
TILE = 256  # the bundled model's
MARGIN = TILE // 2
DEFAULT_CONFIGS = "T,T/2,T/4,T:tta,T/2:tta"


def validation_images(root: Path) -> tuple[list[str], dict[int, list[Path]]]:
    """The bundled model's validation split: class names and 16 images per class."""
    from mscn_geo.data import scan_image_folder, stratified_split

    classes, samples = scan_image_folder(root)
    _, val = stratified_split([s.label for s in samples], 0.2, seed=0)
    by_class: dict[int, list[Path]] = {}
    for i in val:
        by_class.setdefault(samples[i].label, []).append(Path(samples[i].path))
    return classes, by_class


def _image(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        rgb = im.convert("RGB")
        if rgb.size != (IMAGE, IMAGE):
            rgb = rgb.resize((IMAGE, IMAGE), Image.BILINEAR)
        return np.asarray(rgb).transpose(2, 0, 1)


def build_scene(
    path: Path, regions: int, ucmerced: Path = UCMERCED, seed: int = 0
) -> tuple[np.ndarray, list[str]]:
    """Write the mosaic GeoTIFF at ``path``; returns (labels (H, W) uint8, 255 in the
    margin, and the class names)."""
    import rasterio
    from rasterio.transform import from_origin

    classes, by_class = validation_images(ucmerced)
    if regions * regions > len(classes):
        raise SystemExit(f"bench_overlap: at most {int(len(classes) ** 0.5)} x that many regions")
    size = regions * REGION + 2 * MARGIN
    rng = random.Random(seed)
    order = rng.sample(range(len(classes)), regions * regions)
    mosaic = np.zeros((3, size, size), np.uint8)
    labels = np.full((size, size), 255, np.uint8)
    for k, cls in enumerate(order):
        r, c = divmod(k, regions)
        paths = rng.sample(by_class[cls], 4)
        for i, image in enumerate(paths):
            y = MARGIN + r * REGION + (i // 2) * IMAGE
            x = MARGIN + c * REGION + (i % 2) * IMAGE
            # 0 is the margin's nodata: a pure black image pixel becomes 1.
            mosaic[:, y : y + IMAGE, x : x + IMAGE] = np.maximum(_image(image), 1)
        y, x = MARGIN + r * REGION, MARGIN + c * REGION
        labels[y : y + REGION, x : x + REGION] = cls
    profile = {
        "driver": "GTiff",
        "width": size,
        "height": size,
        "count": 3,
        "dtype": "uint8",
        "nodata": 0,
        "crs": "EPSG:32611",
        "transform": from_origin(700_000.0, 3_700_000.0, 0.3, 0.3),
        "tiled": True,
        "blockxsize": 256,
        "blockysize": 256,
        "compress": "deflate",
        "photometric": "rgb",
    }
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(mosaic)
    return labels, classes


def reaggregate(summary: dict[str, Any], stride: int, labels: np.ndarray, classes: list[str]):
    """Pixel accuracy of the run's tiles aggregated with every weighting (no model run)."""
    import geopandas as gpd

    from mscn_geo.aggregate import WEIGHTINGS, OverlapAggregator
    from mscn_geo.tiling import TileGrid

    tiles = gpd.read_file(summary["outputs"]["gpkg"], layer="tiles")
    probs = tiles[[f"p_{name}" for name in classes]].to_numpy(np.float32)
    height, width = labels.shape
    grid = TileGrid(width, height, TILE, stride)
    region = labels != 255
    out = {}
    for weighting in WEIGHTINGS:
        agg = OverlapAggregator(grid, len(classes), weighting)
        agg.add_many(tiles["row"].to_numpy(), tiles["col"].to_numpy(), probs)
        cells = np.concatenate([strip.probs for strip in agg.ready()])
        painted = agg.cells.paint(np.nan_to_num(cells, nan=-1).argmax(-1), 0)
        out[weighting] = round(float((painted[region] == labels[region]).mean()), 4)
    return out


def parse_config(text: str, tile: int) -> dict[str, Any]:
    """``T/4[:WEIGHT][:tta]`` -> stride 64, weighting (default uniform), tta (256 px tiles)."""
    parts = text.split(":")
    stride = tile if parts[0] == "T" else tile // int(parts[0].split("/")[1])
    weights = [p for p in parts[1:] if p != "tta"]
    return {
        "config": text,
        "stride": stride,
        "weighting": weights[0] if weights else "uniform",
        "tta": "tta" in parts[1:],
    }


def run_classify(scene: Path, out: Path, config: dict[str, Any], args: argparse.Namespace):
    cmd = [
        sys.executable,
        "-c",
        "import sys; from mscn_geo_cli.main import main; sys.exit(main())",
        "classify",
        str(scene),
        "--out",
        str(out),
        "--stride",
        str(config["stride"]),
        "--overlap-weight",
        config["weighting"],
        "--device",
        args.device,
        "--batch-size",
        str(args.batch_size),
        "--json",
        "--quiet",
        "--overwrite",
    ]
    if config["tta"]:
        cmd.append("--tta")
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"classify failed ({done.returncode}): {done.stderr.strip()}")
    return json.loads(done.stdout.splitlines()[-1]), wall


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--regions", type=int, default=3, help="scene side in 512 px regions")
    parser.add_argument(
        "--configs", default=DEFAULT_CONFIGS, help="comma-separated STRIDE[:WEIGHT][:tta]"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--ucmerced", type=Path, default=UCMERCED)
    args = parser.parse_args(argv)
    if not args.ucmerced.is_dir():
        raise SystemExit(f"bench_overlap: needs UC Merced at {args.ucmerced}")
    import rasterio

    from mscn_geo.models import load_checkpoint

    tile = load_checkpoint(None).meta.tile_size
    if tile != TILE:
        raise SystemExit(f"bench_overlap: the scene is laid out for {TILE} px tiles, not {tile}")
    result: dict[str, Any] = {
        "benchmark": "overlap",
        "machine": machine(torch.device(args.device)),
        "scene": {},
        "runs": [],
    }
    with tempfile.TemporaryDirectory(prefix="bench_overlap_") as tmp:
        scene = Path(tmp) / "mosaic.tif"
        labels, classes = build_scene(scene, args.regions, args.ucmerced)
        region = labels != 255
        result["scene"] = {
            "size_px": labels.shape[1],
            "regions": f"{args.regions}x{args.regions} regions of 2x2 validation images in a "
            f"{MARGIN} px nodata margin (region boundaries half a tile off the tile grid)",
            "classes": sorted({classes[i] for i in np.unique(labels[region])}),
            "region_pixels": int(region.sum()),
            "tile": tile,
        }
        for text in args.configs.split(","):
            config = parse_config(text.strip(), tile)
            out = Path(tmp) / "out"
            summary, wall = run_classify(scene, out, config, args)
            with rasterio.open(summary["outputs"]["raster"]) as ds:
                raster = ds.read(1)
            accuracy = round(float((raster[region] == labels[region]).mean()), 4)
            by_weighting = reaggregate(summary, config["stride"], labels, classes)
            if by_weighting[config["weighting"]] != accuracy:
                raise RuntimeError(f"re-aggregation {by_weighting} disagrees with {accuracy}")
            row = {
                **config,
                "pixel_accuracy": accuracy,
                "pixel_accuracy_by_weighting": by_weighting,
                "tiles": summary["classified"],
                "tiles_per_s": summary["tiles_per_s"],
                "seconds": summary["seconds"],
                "wall_s": round(wall, 2),
            }
            result["runs"].append(row)
            print(json.dumps(row), flush=True)
            if args.out is not None:  # partial results survive an interrupted run
                finish(result, args.out)
    return finish(result, args.out)


if __name__ == "__main__":
    main()
