"""The options of classifying a scene (``mscn-geo classify`` and ``info``): one dataclass."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from mscn_geo.errors import OptionError
from mscn_geo.fields import documented, option

__all__ = ["ClassifyOptions"]

#: ``batch_size`` and ``workers`` when not given, per device type: what the benchmarks
#: ran at (README, Performance). On an H200 batch 128 and 8 reader threads kept the GPU
#: 84-90 % busy; batch 16 and 2 threads suit the 2-core CPU the CPU figures come from.
DEFAULT_BATCH_SIZE = {"cpu": 16, "cuda": 128}
DEFAULT_WORKERS = {"cpu": 2, "cuda": 8}


@documented
@dataclass
class ClassifyOptions:
    """Options of :func:`~mscn_geo.classify.classify_scene` (the ``mscn-geo classify`` options).

    Each field's help (below) is also its option's ``--help`` text.
    """

    tile_size: int | None = option(None, help="Tile edge in pixels (default: the model's).")
    stride: int | None = option(
        None,
        help="Step between tiles in pixels; must divide the tile size. Below it tiles "
        "overlap and the map has stride x stride cells, each the mean of the tiles "
        "covering it (default: the tile size, no overlap).",
    )
    bands: list[int] | str | None = option(
        None,
        help="1-based scene bands in the model's band order, e.g. 1,2,3 (default: the "
        "scene's bands when it has as many as the model, else red/green/blue by colour "
        "interpretation, else the first ones; never alpha).",
    )
    batch_size: int | None = option(
        None, help="Tiles per forward pass (default: 16 on CPU, 128 on CUDA)."
    )
    device: str = option("auto", help="auto (CUDA if available), cpu, cuda or cuda:N.")
    amp: bool | None = option(
        None, help="Mixed precision, bf16/fp16 (default: on with CUDA, off on CPU)."
    )
    backend: str = option(
        "auto",
        help="What runs the model: auto, torch, torch-bf16 (CPU: convolutions in bf16, "
        "the rest fp32) or onnxruntime (CPU, fp32). auto on CPU without AMP: torch-bf16 "
        "where the CPU has native bf16 and the checkpoint records that bf16 agrees with "
        "fp32 (train measures it), else onnxruntime when installed, else torch (measured "
        "in the README, Performance).",
    )
    workers: int | None = option(
        None,
        help="Threads reading tiles (0: read in the calling thread; default: 2, 8 when "
        "the model runs on CUDA, never more than the CPU count).",
    )
    out_dir: Path = option(
        default_factory=lambda: Path("."), help="Folder for the outputs (created if missing)."
    )
    overwrite: bool = option(False, help="Replace existing outputs instead of failing.")
    channels_last: bool = option(
        True,
        help="Run the model in channels-last memory format (faster for the ResNet "
        "backbones on CPU and CUDA; README, Performance).",
    )
    compile: bool = option(
        False,
        help="torch.compile the model first (not a CLI option: measured slower for "
        "classify on CPU; README, Performance).",
    )
    scale: str | tuple[float, float] | None = option(
        None,
        help="MIN,MAX: map scene values linearly to 0..255, e.g. 0,4095 for 12-bit data "
        "(default: 8-bit data as is, other data types a per-band 2-98 percentile stretch).",
    )
    allow_no_crs: bool = option(
        False,
        help="Classify a scene without CRS: outputs have no CRS and keep the scene's "
        "geotransform coordinates (pixel column/row when it has no geotransform).",
    )
    pad: bool = option(True, help="Pad a scene smaller than one tile (off: refuse it).")
    resample: bool = option(
        False,
        help="Read tiles at the model's pixel size: windows of the matching number of "
        "scene pixels, resampled to the tile size (footprints stay the true windows).",
    )
    resume: bool = option(
        False,
        help="Keep finished tiles in a hidden journal next to the outputs and continue an "
        "interrupted run; scenes already done are skipped.",
    )
    stac: bool = option(
        False,
        help="Also write <scene>.stac.json: a STAC Item of the outputs (footprint in "
        "EPSG:4326, projection and classification extensions, assets with roles).",
    )
    assets: list[str] | str | None = option(
        None,
        help="For a STAC Item scene: comma-separated asset keys to read as the model's "
        "bands, in order, e.g. red,green,blue or B04,B03,B02 (default: its visual asset).",
    )
    aoi: Path | None = option(
        None,
        help="Area of interest: polygons in a GeoPackage, GeoJSON or Shapefile (any CRS). "
        "Only tiles touching it are classified; every output is nodata outside it and "
        "areas count only inside it.",
    )
    quicklook: bool = option(True, help="Write <scene>_quicklook.png.")
    overlap_weight: str = option(
        "uniform",
        help="How overlapping tiles (stride below the tile size) weigh a cell: uniform, "
        "hann or gaussian, the tile's window at the cell's centre (uniform measured best).",
    )
    tta: bool = option(
        False,
        help="Test-time augmentation: average each tile's probabilities over its 8 "
        "flips/rotations (8x the model's work).",
    )
    min_confidence: float | None = option(
        None,
        help="Cells whose top-class probability is below this (0..1) become 'uncertain' "
        "(raster value 254), in every output and summary.",
    )
    probabilities: bool = option(
        False,
        help="Also write <scene>_probs.tif: one band per class (probability x 250) on the "
        "cell grid.",
    )

    def batch_size_for(self, device_type: str) -> int:
        """``batch_size``, or its default for ``device_type`` (``"cpu"``, ``"cuda"``)."""
        if self.batch_size is not None:
            return self.batch_size
        return DEFAULT_BATCH_SIZE.get(device_type, DEFAULT_BATCH_SIZE["cpu"])

    def workers_for(self, device_type: str) -> int:
        """``workers``, or its default for ``device_type``, at most the CPU count."""
        if self.workers is not None:
            return self.workers
        default = DEFAULT_WORKERS.get(device_type, DEFAULT_WORKERS["cpu"])
        return min(default, os.cpu_count() or 1)

    def check(self) -> None:
        """Raise :class:`~mscn_geo.errors.OptionError` for a value no scene could use."""
        from mscn_geo.reader import parse_bands  # rasterio: not for the CLI's --help
        from mscn_geo.scaling import parse_scale

        if self.batch_size is not None and self.batch_size < 1:
            raise OptionError(
                f"batch_size must be at least 1, got {self.batch_size}", field="batch_size"
            )
        if self.workers is not None and self.workers < 0:
            raise OptionError(f"workers must be 0 or more, got {self.workers}", field="workers")
        from mscn_geo.backends import BACKENDS

        if self.backend.strip().lower() not in BACKENDS:
            raise OptionError(
                f"backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}",
                field="backend",
            )
        parse_scale(self.scale)
        parse_bands(self.bands)
        from mscn_geo.aggregate import check_stride, window_weight
        from mscn_geo.tiling import check_tiling
        from mscn_geo.uncertainty import check_min_confidence

        window_weight(0.5, 1, self.overlap_weight)  # a name it knows
        check_min_confidence(self.min_confidence)
        if self.tile_size is not None and self.stride is not None:
            check_tiling(self.tile_size, self.stride)
            check_stride(self.tile_size, self.stride)
