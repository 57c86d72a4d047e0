"""Labelled image chips for training and evaluation.

Layouts accepted:

* a folder per class (ImageFolder layout) of images that PIL or rasterio
  reads: png, jpg, webp, tif, georeferenced GeoTIFF chips, any band count;
* torchgeo's scene-classification datasets already on disk
  (``ucmerced``, ``eurosat``, ``resisc45``), never downloaded.

Images are decoded once into a uint8 cache at a fixed size, so epochs are
bound by augmentation and compute, not by decoding.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from mscn_geo.errors import DatasetError

PIL_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif"}
RASTER_SUFFIXES = {".tif", ".tiff", ".jp2", ".img", ".vrt"}
IMAGE_SUFFIXES = PIL_SUFFIXES | RASTER_SUFFIXES


def read_image(path: Path, bands: int | None = None) -> np.ndarray:
    """Read an image as a (C, H, W) uint8 array.

    PIL formats give RGB (palette/greyscale converted). Rasters keep all their
    bands, or the first ``bands``. Non-uint8 rasters get classify's default
    stretch (:func:`mscn_geo.scaling.estimate_percentiles`): per band, 2nd to
    98th percentile of the valid pixels -> 0..255.
    """
    if path.suffix.lower() in PIL_SUFFIXES:
        from PIL import Image

        with Image.open(path) as im:
            return np.asarray(im.convert("RGB")).transpose(2, 0, 1).copy()
    import rasterio

    from mscn_geo.scaling import estimate_percentiles

    with rasterio.open(path) as src:
        bands_used = list(range(1, (bands or src.count) + 1))
        arr = src.read(bands_used)
        if arr.dtype != np.uint8:  # the same stretch classify applies to such scenes
            arr = estimate_percentiles(src, bands_used, src.nodata).apply(arr)
    return arr


def _resize(chip: Tensor, size: int) -> Tensor:
    if chip.shape[-2:] == (size, size):
        return chip
    from torchvision.transforms.v2 import functional as tvf

    return tvf.resize(chip, [size, size], antialias=True)


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int


def scan_image_folder(root: Path) -> tuple[list[str], list[Sample]]:
    """Class names (sorted folder names) and samples of an ImageFolder tree."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset folder not found: {root}")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    samples = [
        Sample(f, i)
        for i, c in enumerate(classes)
        for f in sorted((root / c).rglob("*"))
        if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file()
    ]
    if len(classes) < 2:
        raise DatasetError(f"{root} needs at least two class folders, found {len(classes)}")
    empty = [c for i, c in enumerate(classes) if not any(s.label == i for s in samples)]
    if empty:
        raise DatasetError(f"class folders without images in {root}: {', '.join(empty)}")
    return classes, samples


def stratified_split(
    labels: Sequence[int], val_fraction: float, seed: int = 0
) -> tuple[list[int], list[int]]:
    """Indices of a per-class random split; same result on every machine.

    Each class keeps ``round(n * val_fraction)`` (at least 1 when it has 2+
    images) for validation.
    """
    if not 0.0 < val_fraction < 1.0:
        raise DatasetError(f"val fraction must be in (0, 1), got {val_fraction}")
    rng = random.Random(seed)
    train, val = [], []
    for label in sorted(set(labels)):
        idx = [i for i, lab in enumerate(labels) if lab == label]
        rng.shuffle(idx)
        n_val = min(len(idx) - 1, max(1, round(len(idx) * val_fraction))) if len(idx) > 1 else 0
        val += idx[:n_val]
        train += idx[n_val:]
    return sorted(train), sorted(val)


class ChipDataset(Dataset):
    """Labelled chips decoded once into memory.

    Args:
        paths: image files.
        labels: class index per file.
        classes: class names (index -> name).
        size: every chip is resized to (size, size) px when cached.
        bands: number of bands to keep (default: what the first image has).
        transform: applied per item to the (C, size, size) uint8 tensor.

    Items are ``(image, label)``: image as ``transform`` leaves it (default
    (C, size, size) uint8), label an int.
    """

    def __init__(
        self,
        paths: Sequence[Path],
        labels: Sequence[int],
        classes: Sequence[str],
        size: int,
        bands: int | None = None,
        transform: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        if not paths:
            raise DatasetError("no images to load")
        self.paths = list(paths)
        self.labels = list(labels)
        self.classes = list(classes)
        self.transform = transform
        chips = []
        for p in self.paths:
            try:
                arr = read_image(p, bands)
            except Exception as exc:
                raise DatasetError(f"cannot read image {p}: {exc}") from exc
            bands = bands or arr.shape[0]
            if arr.shape[0] != bands:
                raise DatasetError(f"{p} has {arr.shape[0]} bands, expected {bands}")
            chips.append(_resize(torch.from_numpy(arr), size))
        self.bands = int(bands or 3)
        self.images = torch.stack(chips)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        img = self.images[i]
        return (self.transform(img) if self.transform else img), self.labels[i]

    def channel_stats(self) -> tuple[list[float], list[float]]:
        """Per-band mean and std of the cached pixels, in 0..1 units."""
        x = self.images.float().div_(255).transpose(0, 1).reshape(self.bands, -1)
        return x.mean(1).tolist(), x.std(1).tolist()

    def subset(self, indices: Sequence[int], transform=None) -> ChipDataset:
        """A view on some items that shares the cache (no re-decoding)."""
        new = object.__new__(ChipDataset)
        new.paths = [self.paths[i] for i in indices]
        new.labels = [self.labels[i] for i in indices]
        new.classes = self.classes
        new.bands = self.bands
        new.transform = transform
        new.images = self.images[list(indices)]
        return new


def load_image_folder(root: Path, size: int, bands: int | None = None) -> ChipDataset:
    """All chips of an ImageFolder tree, cached at ``size`` px."""
    classes, samples = scan_image_folder(root)
    return ChipDataset(
        [s.path for s in samples], [s.label for s in samples], classes, size=size, bands=bands
    )


TORCHGEO_DATASETS = ("ucmerced", "eurosat", "resisc45")


def load_torchgeo_dataset(name: str, root: Path, size: int) -> ChipDataset:
    """A torchgeo scene-classification dataset already on disk (no download).

    The whole dataset (all of torchgeo's splits) is returned; split it with
    :func:`stratified_split` like a folder dataset.
    """
    import torchgeo.datasets as tgd

    classes_by_name = {"ucmerced": tgd.UCMerced, "eurosat": tgd.EuroSAT, "resisc45": tgd.RESISC45}
    if name not in classes_by_name:
        raise DatasetError(f"unknown dataset {name!r}; known: {', '.join(TORCHGEO_DATASETS)}")
    paths: list[Path] = []
    labels: list[int] = []
    classes: list[str] = []
    for split in ("train", "val", "test"):
        try:
            ds = classes_by_name[name](root=str(root), split=split, download=False)
        except Exception as exc:  # torchgeo raises DatasetNotFoundError and friends
            raise DatasetError(f"{name} not found under {root} (no download): {exc}") from exc
        classes = list(ds.classes)
        for path, label in ds.samples:
            paths.append(Path(path))
            labels.append(int(label))
    bands = 3 if name != "eurosat" else 13
    return ChipDataset(paths, labels, classes, size=size, bands=bands)
