"""The training and validation chips of a run, and what they say about the model's input.

Sources, in order: a chips folder with ``chips.json`` (its spatial split), an
ImageFolder with a separate validation folder, an ImageFolder or a torchgeo
dataset split per class at random (:func:`mscn_geo.data.stratified_split`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mscn_geo.data import (
    ChipDataset,
    ChipsManifest,
    classes_without_validation,
    load_image_folder,
    load_torchgeo_dataset,
    read_chips_manifest,
    sample_key,
    scan_image_folder,
    stratified_split,
)
from mscn_geo.errors import DatasetError, OptionError
from mscn_geo.scaling import Scaling
from mscn_geo.training.config import TrainConfig

__all__ = ["DEFAULT_PIXEL_SIZE_M", "DEFAULT_TILE_SIZE", "TrainingData", "prepare_data"]

#: Tile size without ``input_size`` or chips.json, and pixel size of chips
#: that carry none (UC Merced's, the bundled model's).
DEFAULT_TILE_SIZE = 256
DEFAULT_PIXEL_SIZE_M = 0.3


@dataclass
class TrainingData:
    """The chips of a run and the input they define for the model.

    Attributes:
        train, val: the two sets (uint8 caches at ``tile_size`` px).
        described: one line on where the chips came from and how they were split.
        tile_size: the model's tile size (px).
        pixel_size_m: the pixel size of ``tile_size`` px chips (m), ``None`` if unknown.
        band_names: names of the bands, when the chips' manifest gives them.
        scene_bands: 1-based scene bands the chips were read from (chips.json).
        scaling: how raw values became 0..255 (``None``: 8-bit used as is).
    """

    train: ChipDataset
    val: ChipDataset
    described: str
    tile_size: int
    pixel_size_m: float | None
    band_names: list[str] | None = None
    scene_bands: list[int] | None = None
    scaling: Scaling | None = None

    @property
    def val_files(self) -> list[str]:
        return [sample_key(p) for p in self.val.paths]


def prepare_data(
    cfg: TrainConfig,
    data_dir: Path | None,
    val_dir: Path | None = None,
    dataset: str | None = None,
    root: Path | None = None,
    on_warning: Callable[[str], None] | None = None,
) -> TrainingData:
    """Load and split the chips of a run.

    Raises:
        OptionError: no data source, or ``dataset`` without ``root``.
        DatasetError: see :class:`mscn_geo.data.ChipDataset`; also no image left
            for validation.
    """
    warn = on_warning or (lambda _message: None)
    manifest = read_chips_manifest(data_dir) if data_dir is not None and dataset is None else None
    size = cfg.input_size or (manifest.tile_size if manifest else DEFAULT_TILE_SIZE)
    if manifest is not None and val_dir is None:
        data = _from_manifest(Path(data_dir), manifest, size)
    else:
        data = _from_folders(cfg, data_dir, val_dir, dataset, root, size)
    missing = classes_without_validation(data.train.classes, data.train.labels, data.val.labels)
    if missing:
        warn(
            f"no validation image for class(es) {', '.join(missing)} (too few images): "
            "they are trained on but never validated"
        )
    if len(data.val) == 0:
        raise DatasetError("no image left for validation: give each class at least 2 images")
    if data.pixel_size_m is None and data.train.pixel_size_m is not None:
        data.pixel_size_m = data.train.pixel_size_m
        if data.train.pixel_size_spread > 1.05:
            warn(
                f"the chips' pixel sizes differ up to {data.train.pixel_size_spread:.2f}x; "
                f"recording their median, {data.pixel_size_m:.3g} m"
            )
    if cfg.pixel_size_m is not None:
        data.pixel_size_m = cfg.pixel_size_m
    return data


def _from_manifest(root: Path, manifest: ChipsManifest, size: int) -> TrainingData:
    classes, samples = scan_image_folder(root)
    by_rel = {s.path.relative_to(root).as_posix(): s for s in samples}
    parts = []
    for name, listed in (("train", manifest.train), ("val", manifest.val)):
        missing = [rel for rel in listed if rel not in by_rel]
        if missing:
            raise DatasetError(
                f"{root / 'chips.json'} lists {len(missing)} {name} chip(s) not in the folder, "
                f"e.g. {missing[0]}"
            )
        chosen = [by_rel[rel] for rel in listed]
        parts.append(
            ChipDataset(
                [s.path for s in chosen],
                [s.label for s in chosen],
                classes,
                size=size,
                bands=len(manifest.bands),
            )
            if chosen
            else None
        )
    train, val = parts
    if train is None:
        raise DatasetError(f"{root / 'chips.json'} lists no training chip")
    if val is None:
        val = train.subset([])
    return TrainingData(
        train=train,
        val=val,
        described=(
            f"chips {root} (chips.json: spatial-block split, {len(train)} train / {len(val)} val)"
        ),
        tile_size=size,
        pixel_size_m=manifest.pixel_size_m * manifest.tile_size / size,
        band_names=manifest.band_names,
        scene_bands=manifest.bands,
        scaling=manifest.scaling,
    )


def _from_folders(
    cfg: TrainConfig,
    data_dir: Path | None,
    val_dir: Path | None,
    dataset: str | None,
    root: Path | None,
    size: int,
) -> TrainingData:
    if dataset:
        if root is None:
            raise OptionError("a torchgeo dataset needs root, the folder that already holds it")
        full = load_torchgeo_dataset(dataset, root, size)
        described = f"torchgeo {dataset} at {root}"
    elif data_dir is not None:
        full = load_image_folder(data_dir, size)
        described = f"image folders {data_dir}"
    else:
        raise OptionError("give a data folder, or a torchgeo dataset with its root")
    if val_dir is not None:
        val = ChipDataset(
            *_folder_samples(val_dir), size=size, bands=full.bands, scaling=full.scaling
        )
        if val.classes != full.classes:
            raise DatasetError(f"{val_dir} classes differ from the training classes")
        train, described = full, described + f"; validation {val_dir}"
    else:
        tr, va = stratified_split(full.labels, cfg.val_fraction, cfg.seed)
        train, val = full.subset(tr), full.subset(va)
        described += f"; stratified split, {len(tr)} train / {len(va)} val, seed {cfg.seed}"
    return TrainingData(train, val, described, size, None, scaling=full.scaling)


def _folder_samples(root: Path) -> tuple[list[Path], list[int], list[str]]:
    classes, samples = scan_image_folder(root)
    return [s.path for s in samples], [s.label for s in samples], classes
