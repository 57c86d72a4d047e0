"""Generate ``sample_data/synthetic_scene.tif``: a SYNTHETIC georeferenced test scene.

Deterministic (fixed seed): 1300 x 1000 px, 3-band uint8 RGB, EPSG:32633 (UTM 33N)
at 0.3 m pixels, nodata=0 on a wavy left margin (the first tile column is entirely
nodata, the second partly), and five visually different regions: water, forest,
striped fields, a built-up grid with roofs and streets, and bare sand with a road.
The size is not a multiple of 256 so the last tile row and column are shifted inward.
Tiled 256 x 256, DEFLATE; about 1.5 MB.

Usage: python scripts/make_sample_data.py [OUT.tif]
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import rasterio
from PIL import Image
from rasterio.enums import ColorInterp
from rasterio.transform import from_origin

WIDTH, HEIGHT = 1300, 1000
PIXEL = 0.3
ORIGIN = (500_000.0, 5_500_000.0)  # UTM 33N, upper-left corner
CRS = "EPSG:32633"
SEED = 20240601
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "sample_data" / "synthetic_scene.tif"


def smooth_noise(rng: np.random.Generator, cell: int) -> np.ndarray:
    """(HEIGHT, WIDTH) float noise in 0..1, smooth over ``cell`` pixels."""
    small = rng.random((HEIGHT // cell + 2, WIDTH // cell + 2)).astype(np.float32)
    image = Image.fromarray(small).resize(
        ((WIDTH // cell + 2) * cell, (HEIGHT // cell + 2) * cell), Image.BICUBIC
    )
    return np.clip(np.asarray(image)[:HEIGHT, :WIDTH], 0, 1)


def make_scene() -> np.ndarray:
    """(3, HEIGHT, WIDTH) uint8 RGB, 0 only in the nodata margin."""
    rng = np.random.default_rng(SEED)
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    rgb = np.zeros((3, HEIGHT, WIDTH), dtype=np.float32)

    def paint(mask: np.ndarray, colour: np.ndarray) -> None:
        rgb[:, mask] = colour[:, mask] if colour.ndim == 3 else colour[:, None]

    fine = rng.integers(-3, 4, (3, HEIGHT, WIDTH)).astype(np.float32)  # sensor grain
    blobs = smooth_noise(rng, 24)
    wave = 40 * np.sin(y / 90.0)

    # Bare sand everywhere first, with a diagonal road.
    sand = np.stack([205 + 25 * blobs, 185 + 20 * blobs, 140 + 15 * blobs])
    paint(np.ones_like(x, bool), sand)
    road = np.abs((x - 0.6 * y) - 700) < 9
    paint(road, np.full((3, HEIGHT, WIDTH), 95.0))

    # Water: top right, wavy shore.
    water = (y < 380 + wave) & (x > 820 + 30 * np.cos(y / 70.0))
    ripples = 6 * np.sin(x / 7.0 + y / 11.0)
    paint(water, np.stack([25 + ripples, 70 + ripples, 120 + 2 * ripples]))

    # Forest: top middle, dark green blobs.
    forest = (y < 450 + wave) & (x >= 330) & ~water & (x < 820 + 30 * np.cos(y / 70.0))
    crowns = smooth_noise(rng, 6)
    paint(forest, np.stack([20 + 40 * crowns, 60 + 70 * crowns, 20 + 30 * crowns]))

    # Fields: bottom middle, stripes at an angle, two crops.
    fields = (y >= 450 + wave) & (x < 850)
    stripe = ((x * 0.8 + y * 0.6) // 14) % 2 == 0
    crop_a = np.stack([120 + 0 * x, 170 + 0 * x, 60 + 0 * x])
    crop_b = np.stack([200 + 0 * x, 190 + 0 * x, 90 + 0 * x])
    paint(fields & stripe, crop_a)
    paint(fields & ~stripe, crop_b)

    # Built-up: bottom right, street grid with roofs.
    built = (y >= 500) & (x >= 900)
    street = ((x - 900) % 64 < 10) | ((y - 500) % 64 < 10)
    roof_tone = smooth_noise(rng, 64)
    roofs = np.stack([150 + 70 * roof_tone, 70 + 40 * roof_tone, 60 + 30 * roof_tone])
    paint(built & ~street, roofs)
    paint(built & street, np.full((3, HEIGHT, WIDTH), 120.0))

    scene = np.clip(rgb + fine, 1, 255).astype(np.uint8)  # 0 is reserved for nodata
    margin = x < 300 + 30 * np.sin(y / 150.0)  # 270..330: tile column 0 all nodata
    scene[:, margin] = 0
    return scene


def write_scene(path: Path) -> Path:
    scene = make_scene()
    path.parent.mkdir(parents=True, exist_ok=True)
    profile = {
        "driver": "GTiff",
        "width": WIDTH,
        "height": HEIGHT,
        "count": 3,
        "dtype": "uint8",
        "crs": CRS,
        "transform": from_origin(*ORIGIN, PIXEL, PIXEL),
        "nodata": 0,
        "tiled": True,
        "blockxsize": 256,
        "blockysize": 256,
        "compress": "deflate",
        "predictor": 2,
        "zlevel": 9,
        "photometric": "RGB",
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(scene)
        dst.colorinterp = [ColorInterp.red, ColorInterp.green, ColorInterp.blue]
        dst.update_tags(
            SYNTHETIC="yes",
            TIFFTAG_IMAGEDESCRIPTION="SYNTHETIC test scene made by scripts/make_sample_data.py; "
            "not real imagery",
            generator="mscn-geo scripts/make_sample_data.py",
            seed=str(SEED),
        )
    return path


if __name__ == "__main__":
    out = write_scene(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUT)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB)")
