"""Map accuracy of overlapping tiles: pixel accuracy of ``mscn-geo classify``'s class raster.

The scene is built from UC Merced *validation* images of the bundled model's
split (stratified 64 train / 16 validation per class, seed 0; the checkpoint's
``training_data`` and ``scripts/train_default_model.py``): classes fill regions
of 2 x 2 images (512 x 512 px at 0.3 m), and the region grid is offset by half
a tile (128 px) from the tile grid, so every stride-T tile straddles four
regions and region boundaries never fall on the tile grid. A scene of R x R
regions' size holds (R + 1)^2 region slots (cut at the scene edges), each a
different class picked with a fixed seed, each from 4 validation images of
its class never used twice.

Each configuration runs ``mscn-geo classify`` in a child process (``--json``)
and compares the class raster with the known class of every pixel. Figures:
pixel accuracy, tiles classified, tiles/s as classify reports it.

    python benchmarks/bench_overlap.py --out benchmarks/results/overlap_cpu.json
    python benchmarks/bench_overlap.py --regions 2 --configs T:hann,T/4:hann   # quick

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
DEFAULT_CONFIGS = "T:hann,T/4:hann,T/4:uniform,T/2:hann,T:hann:tta,T/4:gaussian,T/2:hann:tta"


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
    """Write the mosaic GeoTIFF at ``path``; returns (labels (H, W) uint8, class names)."""
    import rasterio
    from rasterio.transform import from_origin

    classes, by_class = validation_images(ucmerced)
    size = regions * REGION
    slots = regions + 1
    rng = random.Random(seed)
    order = list(range(len(classes)))
    rng.shuffle(order)
    pools = {c: list(paths) for c, paths in by_class.items()}
    for paths in pools.values():
        rng.shuffle(paths)
    # Slot grid starts half a tile before the scene: boundaries at 384, 896, ... px.
    shift = REGION - IMAGE // 2
    mosaic = np.zeros((3, slots * REGION, slots * REGION), np.uint8)
    labels = np.zeros((slots * REGION, slots * REGION), np.uint8)
    for k in range(slots * slots):
        cls = order[k % len(order)]
        r, c = divmod(k, slots)
        for dy in range(2):
            for dx in range(2):
                pool = pools[cls]
                img = _image(pool.pop() if len(pool) > 0 else by_class[cls][0])
                y, x = r * REGION + dy * IMAGE, c * REGION + dx * IMAGE
                mosaic[:, y : y + IMAGE, x : x + IMAGE] = img
        labels[r * REGION : (r + 1) * REGION, c * REGION : (c + 1) * REGION] = cls
    mosaic = mosaic[:, shift : shift + size, shift : shift + size]
    labels = labels[shift : shift + size, shift : shift + size]
    profile = {
        "driver": "GTiff",
        "width": size,
        "height": size,
        "count": 3,
        "dtype": "uint8",
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


def parse_config(text: str, tile: int) -> dict[str, Any]:
    """``T/4:hann[:tta]`` -> stride 64, weighting hann, tta on (for 256 px tiles)."""
    parts = text.split(":")
    stride = tile if parts[0] == "T" else tile // int(parts[0].split("/")[1])
    return {
        "config": text,
        "stride": stride,
        "weighting": parts[1] if len(parts) > 1 else "hann",
        "tta": "tta" in parts[2:],
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
        "--configs", default=DEFAULT_CONFIGS, help="comma-separated STRIDE:WEIGHT[:tta]"
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
    result: dict[str, Any] = {
        "benchmark": "overlap",
        "machine": machine(torch.device(args.device)),
        "scene": {},
        "runs": [],
    }
    with tempfile.TemporaryDirectory(prefix="bench_overlap_") as tmp:
        scene = Path(tmp) / "mosaic.tif"
        labels, classes = build_scene(scene, args.regions, args.ucmerced)
        present = sorted({classes[i] for i in np.unique(labels)})
        result["scene"] = {
            "size_px": labels.shape[1],
            "regions": f"{args.regions + 1}x{args.regions + 1} slots of 2x2 validation images,"
            " cut at the edges, offset 128 px from the tile grid",
            "classes": present,
            "tile": tile,
        }
        for text in args.configs.split(","):
            config = parse_config(text.strip(), tile)
            out = Path(tmp) / "out"
            summary, wall = run_classify(scene, out, config, args)
            with rasterio.open(summary["outputs"]["raster"]) as ds:
                raster = ds.read(1)
            accuracy = float((raster == labels).mean())
            row = {
                **config,
                "pixel_accuracy": round(accuracy, 4),
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
