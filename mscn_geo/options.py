"""The options of classifying a scene (``mscn-geo classify`` and ``info``): one dataclass."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mscn_geo.errors import OptionError
from mscn_geo.reader import parse_bands
from mscn_geo.scaling import parse_scale

__all__ = ["ClassifyOptions"]


@dataclass
class ClassifyOptions:
    """Options of :func:`~mscn_geo.classify.classify_scene` (the ``mscn-geo classify`` options).

    Attributes:
        tile_size: tile edge in pixels; ``None``: the model's ``meta.tile_size``.
        stride: tile step in pixels; ``None``: the tile size (no overlap).
        bands: 1-based scene bands in the model's band order; ``None``: automatic.
        batch_size: tiles per forward pass.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        amp: mixed precision; ``None``: on for CUDA, off for CPU.
        backend: what runs the model: ``auto`` (ONNX Runtime for fp32 on CPU when
            installed, else PyTorch), ``torch`` or ``onnxruntime``
            (:mod:`mscn_geo.backends`; measured in the README, Performance).
        workers: threads reading tiles (0: read in the calling thread).
        out_dir: folder for the outputs (created if missing).
        overwrite: replace existing outputs instead of failing.
        channels_last: run the model in channels-last memory format (faster for
            the ResNet backbones on CPU and CUDA; README, Performance).
        compile: ``torch.compile`` the model first (not a CLI option: measured slower
            for classify on CPU, README, Performance).
        scale: ``"MIN,MAX"`` linear scaling to 0..255 (``--scale``); default: a
            per-band percentile stretch for non-uint8 data (:mod:`mscn_geo.scaling`).
        allow_no_crs: classify a scene without CRS; outputs have no CRS and are
            in the scene's pixel (or own) coordinates.
        pad: pad a scene smaller than one tile (``False``: refuse it).
        resample: read tiles at the model's pixel size (windows of the matching
            number of scene pixels, resampled to the tile size).
        resume: keep finished tiles in a journal next to the outputs and continue
            from it (:mod:`mscn_geo.resume`).
        stac: also write ``<scene>.stac.json``, a STAC Item of the outputs
            (:mod:`mscn_geo.stac_out`).
        assets: for a STAC Item given as scene, the asset keys to read as bands,
            in the model's band order; ``None``: its visual asset (:mod:`mscn_geo.stac_in`).
        aoi: area of interest, a polygon file in any CRS (:mod:`mscn_geo.aoi`):
            only tiles touching it are classified, outputs are nodata outside it.
        quicklook: write ``<scene>_quicklook.png`` (:mod:`mscn_geo.quicklook`).
    """

    tile_size: int | None = None
    stride: int | None = None
    bands: list[int] | str | None = None
    batch_size: int = 16
    device: str = "auto"
    amp: bool | None = None
    backend: str = "auto"
    workers: int = 2
    out_dir: Path = field(default_factory=lambda: Path("."))
    overwrite: bool = False
    channels_last: bool = True
    compile: bool = False
    scale: str | tuple[float, float] | None = None
    allow_no_crs: bool = False
    pad: bool = True
    resample: bool = False
    resume: bool = False
    stac: bool = False
    assets: list[str] | str | None = None
    aoi: Path | None = None
    quicklook: bool = True

    def check(self) -> None:
        """Raise :class:`~mscn_geo.errors.OptionError` for a value no scene could use."""
        if self.batch_size < 1:
            raise OptionError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.workers < 0:
            raise OptionError(f"--workers must be 0 or more, got {self.workers}")
        from mscn_geo.backends import BACKENDS

        if self.backend.strip().lower() not in BACKENDS:
            raise OptionError(
                f"--backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}"
            )
        parse_scale(self.scale)
        parse_bands(self.bands)
