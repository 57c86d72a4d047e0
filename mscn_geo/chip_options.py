"""The options of ``mscn-geo chips`` (:func:`mscn_geo.chips.make_chips`): one dataclass.

Kept apart from :mod:`mscn_geo.chips` so that the command line can declare its
options from these fields without importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mscn_geo.errors import OptionError
from mscn_geo.fields import option
from mscn_geo.options import ClassifyOptions

__all__ = ["ChipOptions"]


@dataclass
class ChipOptions:
    """Options of :func:`make_chips` (the ``mscn-geo chips`` options).

    Each field carries its help (:mod:`mscn_geo.fields`). Of ``read``,
    ``tile_size``, ``stride``, ``bands``, ``scale``, ``resample`` and ``workers``
    mean what they mean for classify; the other fields are not used (scenes
    smaller than one tile are refused rather than padded). ``class_field``
    values become the class folder and model class names.
    """

    labels: Path = option(help="Polygon layer of the classes (GeoPackage, GeoJSON, Shapefile...).")
    class_field: str = option(help="Field of the labels naming each polygon's class.")
    out_dir: Path = option(help="Chip folder to create.")
    layer: str | None = option(None, help="Layer of the labels (needed when there are several).")
    read: ClassifyOptions = option(
        default_factory=ClassifyOptions, help="How scenes are read (classify's options)."
    )
    min_cover: float = option(
        0.9, help="Share of a tile's valid pixels one class must cover to make a chip."
    )
    val_fraction: float = option(
        0.2, help="Share of each class's chips aimed at validation (0: no split)."
    )
    seed: int = option(0, help="Seed of the spatial split's block order.")
    block_tiles: int = option(
        2, help="Edge of the split's blocks in tiles; a block is train or val whole."
    )
    min_chips: int = option(20, help="Warn about classes with fewer chips.")
    overwrite: bool = option(False, help="Replace the chip folder if this command made it before.")

    def check(self) -> None:
        self.read.check()
        if not 0.0 < self.min_cover <= 1.0:
            raise OptionError(
                f"min_cover must be in (0, 1], got {self.min_cover:g}", field="min_cover"
            )
        if not 0.0 <= self.val_fraction < 1.0:
            raise OptionError(
                f"val_fraction must be in [0, 1), got {self.val_fraction:g}", field="val_fraction"
            )
        if self.block_tiles < 1:
            raise OptionError(
                f"block_tiles must be at least 1, got {self.block_tiles}", field="block_tiles"
            )
        if self.min_chips < 0:
            raise OptionError(
                f"min_chips must be 0 or more, got {self.min_chips}", field="min_chips"
            )

    def read_options(self) -> ClassifyOptions:
        """classify's options for reading the scenes (padding off: no padded chips)."""
        return ClassifyOptions(
            tile_size=self.read.tile_size,
            stride=self.read.stride,
            bands=self.read.bands,
            scale=self.read.scale,
            resample=self.read.resample,
            workers=self.read.workers,
            pad=False,
        )
