"""Quicklook of a 30,000 px scene: time and peak memory of reading it through its overviews.

Generates a 30,000 x 30,000 px 3-band uint8 tiled GeoTIFF with internal
overviews (average, factors 2..128) and a class raster on the same grid (mode
overviews are slow to build on 900 Mpx, so the benchmark's class raster gets
nearest ones; the quicklook reads it the same way), then renders and saves
``<scene>_quicklook.png`` (:func:`mscn_geo.quicklook.render_quicklook`) in a
fresh child process so that its peak RSS is its own. With ``--no-overviews``
the same scene is also measured without overviews (GDAL then decodes every
pixel once: the figure shows what the overviews buy).

    python benchmarks/bench_quicklook.py --out benchmarks/results/quicklook_cpu.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from _common import ROOT, RssSampler, finish, machine
from _common import write_scene as make_scene

NAMES = ["forest", "river", "denseresidential", "agricultural"]


def write_classes(path: Path, size: int) -> Path:
    """A class raster of 512 px blocks of the four classes, written in strips, nearest overviews."""
    from rasterio.enums import Resampling
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    from mscn_geo.io import ClassRasterWriter, class_colours

    strip = 512
    with ClassRasterWriter(
        path,
        width=size,
        height=size,
        crs="EPSG:32633",
        transform=from_origin(500_000.0, 5_000_000.0, 0.5, 0.5),
        class_names=NAMES,
        colours=class_colours(NAMES),
        resampling=Resampling.nearest,
    ) as writer:
        cols = (np.arange(size) // 512).astype(np.uint8)
        for y0 in range(0, size, strip):
            h = min(strip, size - y0)
            row = np.uint8((y0 // 512) % 4)
            data = np.broadcast_to((cols + row) % len(NAMES), (h, size)).astype(np.uint8)
            writer.write(Window(0, y0, size, h), data)
    return path


def add_overviews(path: Path) -> float:
    import rasterio
    from rasterio.enums import Resampling

    start = time.perf_counter()
    with rasterio.open(path, "r+") as ds:
        ds.build_overviews([2, 4, 8, 16, 32, 64, 128], Resampling.average)
    return time.perf_counter() - start


def child(args: argparse.Namespace) -> None:
    """Render one quicklook and print one JSON line (runs in its own process)."""
    from mscn_geo.io import class_colours
    from mscn_geo.quicklook import render_quicklook
    from mscn_geo.reader import open_scene

    info = open_scene(args.scene, ["red", "green", "blue"])
    shares = [0.25] * len(NAMES)
    out = Path(args.scene).with_name(Path(args.scene).stem + "_quicklook.png")
    with RssSampler() as rss:
        # ru_maxrss survives exec (it would be the parent's peak): poll RSS instead.
        start_mb = rss.peak_mb
        start = time.perf_counter()
        quicklook = render_quicklook(info, Path(args.classes), NAMES, class_colours(NAMES), shares)
        quicklook.save(out)
        seconds = time.perf_counter() - start
    print(
        json.dumps(
            {
                "seconds": round(seconds, 3),
                "peak_rss_mb": round(rss.peak_mb, 1),
                "rss_at_start_mb": round(start_mb, 1),
                "added_mb": round(rss.peak_mb - start_mb, 1),
                "png_size": list(quicklook.image.size),
                "png_bytes": out.stat().st_size,
                "warnings": quicklook.warnings,
            }
        )
    )


def measure(scene: Path, classes: Path) -> dict[str, Any]:
    command = [sys.executable, __file__, "--child", str(scene), "--classes", str(classes)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=False)
    if done.returncode != 0:
        raise RuntimeError(done.stderr)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=30_000)
    parser.add_argument("--no-overviews", action="store_true", help="also time it without")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--classes", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(argparse.Namespace(scene=args.child, classes=args.classes))
        return {}

    import torch

    result: dict[str, Any] = {
        "benchmark": "quicklook",
        "machine": machine(torch.device("cpu")),
        "size_px": args.size,
        "runs": [],
    }
    with tempfile.TemporaryDirectory(prefix="bench_quicklook_") as tmp:
        start = time.perf_counter()
        scene = make_scene(Path(tmp) / "scene.tif", args.size)
        classes = write_classes(Path(tmp) / "scene_classes.tif", args.size)
        result["setup_seconds"] = round(time.perf_counter() - start, 1)
        if args.no_overviews:
            result["runs"].append({"overviews": False, **measure(scene, classes)})
        result["overview_build_seconds"] = round(add_overviews(scene), 1)
        result["runs"].insert(0, {"overviews": True, **measure(scene, classes)})
    return finish(result, args.out)


if __name__ == "__main__":
    summary = main()
    if summary:
        print(json.dumps(summary, indent=2))
