"""Labelled image chips for training and evaluation.

Layouts accepted:

* a folder per class (ImageFolder layout) of images that PIL or rasterio
  reads: png, jpg, webp, tif, georeferenced GeoTIFF chips; any band count, the
  same for every chip (PIL formats count as 3 bands, RGB);
* such a folder made by ``mscn-geo chips``, with ``chips.json`` (bands,
  scaling, pixel size, tile size and a spatial train/validation split), see
  :class:`ChipsManifest`;
* torchgeo's scene-classification datasets already on disk
  (``ucmerced``, ``eurosat``, ``resisc45``), never downloaded.

Images are decoded once into a uint8 cache at a fixed size, so epochs are
bound by augmentation and compute, not by decoding. Chips that are not 8-bit
are mapped to 0..255 with ONE per-band stretch for the whole dataset (2nd to
98th percentile of all chips' valid pixels, :func:`dataset_scaling`), which
the checkpoint records and classify applies to scenes: a per-chip stretch
would show the model other values than classify does.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from mscn_geo.errors import DatasetError
from mscn_geo.scaling import PERCENTILES, Scaling

PIL_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif"}
RASTER_SUFFIXES = {".tif", ".tiff", ".jp2", ".img", ".vrt"}
IMAGE_SUFFIXES = PIL_SUFFIXES | RASTER_SUFFIXES


@dataclass(frozen=True)
class ChipProbe:
    """What a chip's header says: band count, data type, pixel size (m) if georeferenced."""

    bands: int
    dtype: str
    pixel_size_m: float | None
    width: int


def probe_image(path: Path) -> ChipProbe:
    """Read only the header of ``path``."""
    if path.suffix.lower() in PIL_SUFFIXES:
        from PIL import Image

        with Image.open(path) as im:
            return ChipProbe(3, "uint8", None, im.width)
    import rasterio

    from mscn_geo.plan import pixel_size_m

    with rasterio.open(path) as src:
        size = pixel_size_m(src) if src.crs is not None else None
        return ChipProbe(src.count, src.dtypes[0], size, src.width)


def read_image(path: Path, bands: int | None = None, scaling: Scaling | None = None) -> np.ndarray:
    """Read an image as a (C, H, W) uint8 array.

    PIL formats give RGB (palette/greyscale converted). Rasters keep all their
    bands, or the first ``bands``. Non-uint8 rasters are mapped to 0..255 with
    ``scaling`` (the dataset's, see :func:`dataset_scaling`); without one such
    a raster is an error.
    """
    if path.suffix.lower() in PIL_SUFFIXES:
        from PIL import Image

        with Image.open(path) as im:
            return np.asarray(im.convert("RGB")).transpose(2, 0, 1).copy()
    import rasterio

    with rasterio.open(path) as src:
        arr = src.read(list(range(1, (bands or src.count) + 1)))
    if arr.dtype != np.uint8:
        if scaling is None:
            raise DatasetError(f"{path} is {arr.dtype}: it needs the dataset's scaling")
        arr = scaling.apply(arr)
    return arr


# Pixels sampled per chip for the dataset-wide stretch (a fixed grid, so the
# same chips always give the same stretch).
_STRETCH_SAMPLES = 64


def dataset_scaling(paths: Sequence[Path], bands: int) -> Scaling:
    """One per-band 2-98 percentile stretch over the valid pixels of all ``paths``.

    Each chip contributes a fixed grid of at most 64 x 64 pixels (masked,
    nodata and non-finite pixels left out).
    """
    import rasterio

    samples = []
    for path in paths:
        with rasterio.open(path) as src:
            step_y = max(1, src.height // _STRETCH_SAMPLES)
            step_x = max(1, src.width // _STRETCH_SAMPLES)
            idx = list(range(1, bands + 1))
            data = src.read(idx)[:, ::step_y, ::step_x].reshape(bands, -1).astype(np.float64)
            valid = src.read_masks(idx)[:, ::step_y, ::step_x].reshape(bands, -1).all(axis=0)
            valid &= np.isfinite(data).all(axis=0)
            if src.nodata is not None and not np.isnan(src.nodata):
                valid &= (data != src.nodata).any(axis=0)
            samples.append(data[:, valid])
    values = np.concatenate(samples, axis=1)
    if values.shape[1] == 0:
        raise DatasetError("the chips have no valid pixels")
    low, high = np.percentile(values, PERCENTILES, axis=1)
    high = np.where(high > low, high, low + 1.0)
    return Scaling("training", tuple(map(float, low)), tuple(map(float, high)))


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
    images, never all of them) for validation; a class of one image is used
    for training only (see :func:`classes_without_validation`).
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


def classes_without_validation(
    classes: Sequence[str], train_labels: Sequence[int], val_labels: Sequence[int]
) -> list[str]:
    """Names of the classes that have training images but none for validation."""
    seen = set(val_labels)
    return [classes[i] for i in sorted(set(train_labels)) if i not in seen]


def sample_key(path: Path) -> str:
    """``class/file`` of a chip: how a split names it, whatever folder holds the dataset."""
    path = Path(path)
    return f"{path.parent.name}/{path.name}"


class ChipDataset(Dataset):
    """Labelled chips decoded once into memory.

    Args:
        paths: image files.
        labels: class index per file.
        classes: class names (index -> name).
        size: every chip is resized to (size, size) px when cached.
        bands: number of bands to keep (the first ones); default: every chip's
            band count, which must then be the same for all.
        scaling: how non-8-bit chips become 0..255; default: a stretch computed
            from these chips (:func:`dataset_scaling`), ``None`` when all are 8-bit.
        transform: applied per item to the (C, size, size) uint8 tensor.

    Attributes:
        scaling: the scaling used (``None``: 8-bit chips used as they are).
        pixel_size_m: pixel size (m) of the cached chips when every chip is
            georeferenced (the median, scaled by the resize to ``size``), else ``None``.

    Items are ``(image, label)``: image as ``transform`` leaves it (default
    (C, size, size) uint8), label an int.

    Raises:
        DatasetError: no images, an unreadable image, chips of different band
            counts (the message counts them), fewer bands than ``bands``.
    """

    def __init__(
        self,
        paths: Sequence[Path],
        labels: Sequence[int],
        classes: Sequence[str],
        size: int,
        bands: int | None = None,
        scaling: Scaling | None = None,
        transform: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        if not paths:
            raise DatasetError("no images to load")
        self.paths = list(paths)
        self.labels = list(labels)
        self.classes = list(classes)
        self.transform = transform
        probes = []
        for p in self.paths:
            try:
                probes.append(probe_image(p))
            except Exception as exc:
                raise DatasetError(f"cannot read image {p}: {_first_line(exc)}") from exc
        self.bands = _band_count(self.paths, probes, bands)
        wide = [p for p, probe in zip(self.paths, probes, strict=True) if probe.dtype != "uint8"]
        if scaling is None and wide:
            scaling = dataset_scaling(wide, self.bands)
        self.scaling = scaling if wide or scaling is not None else None
        sizes = [
            probe.pixel_size_m * probe.width / size
            for probe in probes
            if probe.pixel_size_m is not None
        ]
        self.pixel_size_m = float(np.median(sizes)) if len(sizes) == len(probes) else None
        self.pixel_size_spread = (max(sizes) / min(sizes)) if sizes and min(sizes) > 0 else 1.0
        chips = []
        for p in self.paths:
            try:
                arr = read_image(p, self.bands, self.scaling)
            except DatasetError:
                raise
            except Exception as exc:
                raise DatasetError(f"cannot read image {p}: {_first_line(exc)}") from exc
            chips.append(_resize(torch.from_numpy(arr), size))
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
        new.__dict__.update(self.__dict__)
        new.paths = [self.paths[i] for i in indices]
        new.labels = [self.labels[i] for i in indices]
        new.transform = transform
        new.images = self.images[list(indices)]
        return new


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def _band_count(paths: Sequence[Path], probes: Sequence[ChipProbe], bands: int | None) -> int:
    if bands is not None:
        short = [
            (p, probe.bands) for p, probe in zip(paths, probes, strict=True) if probe.bands < bands
        ]
        if short:
            path, n = short[0]
            raise DatasetError(
                f"{len(short)} chip(s) have fewer than the {bands} bands needed, e.g. {path} ({n})"
            )
        return bands
    counts = Counter(probe.bands for probe in probes)
    if len(counts) > 1:
        example = {probe.bands: p for p, probe in zip(paths, probes, strict=True)}
        parts = "; ".join(
            f"{n} chip(s) with {b} band(s), e.g. {example[b]}" for b, n in counts.most_common()
        )
        raise DatasetError(
            f"chips of different band counts: {parts}. Every chip must have the same bands "
            "(PNG/JPEG/WebP count as 3, RGB)"
        )
    return next(iter(counts))


def load_image_folder(root: Path, size: int, bands: int | None = None) -> ChipDataset:
    """All chips of an ImageFolder tree, cached at ``size`` px."""
    classes, samples = scan_image_folder(root)
    return ChipDataset(
        [s.path for s in samples], [s.label for s in samples], classes, size=size, bands=bands
    )


MANIFEST = "chips.json"


@dataclass(frozen=True)
class ChipsManifest:
    """``DIR/chips.json`` written by ``mscn-geo chips`` next to its class folders.

    Attributes:
        bands: 1-based scene bands the chips were read from.
        band_names: their names (the model's ``bands``).
        scaling: how scene values became the chips' 0..255 (``None``: 8-bit as is).
        pixel_size_m: the chips' pixel size in metres.
        tile_size: the chips' side in px.
        train, val: chip paths relative to DIR (a split by spatial blocks).
    """

    bands: list[int]
    band_names: list[str]
    scaling: Scaling | None
    pixel_size_m: float
    tile_size: int
    train: list[str]
    val: list[str]


def read_chips_manifest(root: Path) -> ChipsManifest | None:
    """The manifest of the chips folder ``root``; ``None`` when it has none."""
    path = Path(root) / MANIFEST
    if not path.is_file():
        return None
    try:
        raw: dict[str, Any] = json.loads(path.read_text())
        split = raw["split"]
        manifest = ChipsManifest(
            bands=[int(b) for b in raw["bands"]],
            band_names=[str(b) for b in raw["band_names"]],
            scaling=Scaling.from_dict(raw["scaling"]) if raw.get("scaling") else None,
            pixel_size_m=float(raw["pixel_size_m"]),
            tile_size=int(raw["tile_size"]),
            train=[str(p) for p in split["train"]],
            val=[str(p) for p in split["val"]],
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DatasetError(f"{path} is not a valid chips manifest ({_first_line(exc)})") from exc
    if len(manifest.band_names) != len(manifest.bands):
        raise DatasetError(f"{path}: bands and band_names differ in length")
    return manifest


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
