"""Fixtures: small georeferenced GeoTIFFs with nodata, and a tiny random-weight checkpoint."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import from_origin

from mscn_geo.models import LoadedModel, ModelMeta, create_model, load_checkpoint, save_checkpoint

TINY_CLASSES = ["water", "forest", "urban"]
TINY_TILE = 64
ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


def _write_scene(
    path: Path,
    width: int,
    height: int,
    crs: str | None = "EPSG:32633",
    nodata: float | None = 0,
    nodata_cols: int = 0,
    bands: int = 3,
    dtype: str = "uint8",
    tiled: bool = True,
    transform: object | None = None,
    seed: int = 0,
) -> Path:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    # A different brightness every 64 px block so tiles get different inputs and
    # so different classes from the tiny model; never 0 where valid.
    base = (((x // 64) * 3 + (y // 64) * 5) % 7 * 30 + 20).astype(np.float64)
    data = np.stack([base + 30 * b for b in range(bands)])
    data = data + rng.integers(0, 20, data.shape)
    if np.dtype(dtype).kind in "ui":
        data = np.clip(data, 1, np.iinfo(dtype).max)
    data = data.astype(dtype)
    if nodata_cols:
        data[:, :, :nodata_cols] = nodata if nodata is not None else 0
    if transform is None:
        transform = (
            from_origin(10.0, 50.0, 0.0001, 0.0001)
            if crs == "EPSG:4326"
            else from_origin(500_000.0, 5_000_000.0, 0.5, 0.5)
        )
    profile = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": bands,
        "dtype": dtype,
        "crs": crs,
        "transform": transform,
        "nodata": nodata,
    }
    if tiled:
        profile.update(tiled=True, blockxsize=64, blockysize=64)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


@pytest.fixture(scope="session", autouse=True)
def _onnx_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Exported ONNX graphs (backend onnxruntime) go to a per-session folder, not ~/.cache.

    Set in the environment, so CLI subprocesses share it: each model is exported once.
    """
    import os

    os.environ["MSCN_GEO_CACHE"] = str(tmp_path_factory.mktemp("mscn-geo-cache"))


@pytest.fixture
def make_scene(tmp_path: Path) -> Callable[..., Path]:
    """Factory: ``make_scene(width, height, name='scene.tif', **options)`` -> a GeoTIFF path.

    Options: crs ('EPSG:32633'; None for none), nodata (0), nodata_cols (leftmost
    columns set to nodata), bands (3), dtype ('uint8'), tiled (True), transform.
    """

    def make(width: int, height: int, name: str = "scene.tif", **kwargs: object) -> Path:
        return _write_scene(tmp_path / name, width, height, **kwargs)  # type: ignore[arg-type]

    return make


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight mscn_resnet18, 3 classes, 64 px tiles (seed fixed)."""
    torch.manual_seed(0)
    model = create_model("mscn_resnet18", num_classes=len(TINY_CLASSES), dim=32).eval()
    # Random weights give one class for every input; standardising the logits over
    # inputs of different brightness makes the class depend on the input, so tests
    # that compare classes between tiles (raster vs polygons) can fail.
    gen = torch.Generator().manual_seed(1)
    levels = torch.linspace(-2, 2, 16).view(-1, 1, 1, 1)
    calibration = levels + 0.3 * torch.randn(16, 3, TINY_TILE, TINY_TILE, generator=gen)
    with torch.inference_mode():
        logits = model(calibration)
    with torch.no_grad():
        mean, std = logits.mean(0), logits.std(0)
        model.head.weight.div_(std[:, None])
        model.head.bias.sub_(mean).div_(std)
    meta = ModelMeta(
        class_names=list(TINY_CLASSES),
        tile_size=TINY_TILE,
        pixel_size_m=0.5,
        training_data="none: test fixture",
        trained=False,
    )
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    save_checkpoint(path, model, "mscn_resnet18", meta, arch_kwargs={"dim": 32})
    return path


@pytest.fixture(scope="session")
def tiny_model(tiny_checkpoint: Path) -> LoadedModel:
    return load_checkpoint(tiny_checkpoint)


def classify_and_read(scene: Path, model: LoadedModel, out: Path, **options: object):
    """classify_scene on the CPU; returns (result, tiles frame, class raster, raster profile)."""
    import geopandas as gpd

    from mscn_geo.classify import classify_scene
    from mscn_geo.options import ClassifyOptions

    kwargs = {"device": "cpu", "batch_size": 8, **options}
    result = classify_scene(scene, model, ClassifyOptions(out_dir=out, **kwargs))  # type: ignore[arg-type]
    frame = gpd.read_file(result.outputs["gpkg"], layer="tiles")
    with rasterio.open(result.outputs["raster"]) as ds:
        return result, frame, ds.read(1), ds.profile


#: The colour chips' classes and the band each one brightens.
COLOUR_BANDS = {"blue": 2, "green": 1, "red": 0}


def colour_chips(
    root: Path,
    per_class: int = 6,
    size: int = 32,
    seed: int = 0,
    formats: tuple[str, ...] = ("png",),
    order: tuple[str, ...] = tuple(COLOUR_BANDS),
) -> Path:
    """An ImageFolder of blue, green and red chips (noise plus 150 in the class's band);
    chip ``i`` is saved as ``formats[i % len(formats)]``; the random pixels are drawn
    class by class in ``order``."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for name in order:
        band = COLOUR_BANDS[name]
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            arr = rng.integers(0, 70, (size, size, 3), dtype=np.uint8)
            arr[..., band] += 150
            Image.fromarray(arr).save(root / name / f"{i}.{formats[i % len(formats)]}")
    return root
