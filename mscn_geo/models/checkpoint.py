"""One-file checkpoints that carry their own metadata (like timm's pretrained cfg).

A checkpoint is a ``torch.save``d dict of plain Python values and tensors, so
it loads with ``weights_only=True`` (no pickled code runs):

    {"format": "mscn-geo-checkpoint", "format_version": 1,
     "arch": "mscn_resnet18", "arch_kwargs": {...},
     "meta": ModelMeta as dict, "state_dict": {...}}
"""

from __future__ import annotations

import dataclasses
import os
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mscn_geo.errors import CheckpointError, explain
from mscn_geo.io.atomic import atomic_file
from mscn_geo.models.registry import create_model, has_mixed_precision, list_models
from mscn_geo.scaling import Scaling

FORMAT = "mscn-geo-checkpoint"
FORMAT_VERSION = 1
BUNDLED_MODEL = Path(__file__).resolve().parent.parent / "weights" / "mscn_resnet18_ucmerced.pt"


@dataclass
class ModelMeta:
    """Everything needed to use a model on new imagery.

    Pixel values are divided by 255 and then normalised with ``mean``/``std``
    (one value per band, in 0..1 units).

    Attributes:
        scaling: how scene values were mapped to 0..255 for training
            (``Scaling.to_dict()``); ``None``: 8-bit imagery used as it is.
            Classify applies a ``fixed``/``training`` scaling to every scene.
        scene_bands: 1-based scene bands the training chips were read from
            (when they were cut from scenes by ``mscn-geo chips``).
        val_files: ``class/file`` of every validation chip, so that
            ``evaluate --split val`` scores exactly these.
    """

    class_names: list[str]
    bands: list[str] = field(default_factory=lambda: ["red", "green", "blue"])
    mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])
    tile_size: int = 256
    pixel_size_m: float = 0.3
    training_data: str = "none (random weights)"
    trained: bool = False
    version: str = ""
    created: str = ""
    recipe: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    scaling: dict[str, Any] | None = None
    scene_bands: list[int] | None = None
    val_files: list[str] = field(default_factory=list)

    @property
    def status(self) -> str:
        """``trained`` or ``UNTRAINED placeholder``, as every report shows it."""
        return "trained" if self.trained else "UNTRAINED placeholder"

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def in_chans(self) -> int:
        return len(self.bands)

    def validate(self) -> None:
        n = len(self.bands)
        if not self.class_names:
            raise CheckpointError("checkpoint has no class names")
        if len(self.mean) != n or len(self.std) != n:
            raise CheckpointError(f"checkpoint mean/std do not match its {n} bands")
        if any(s <= 0 for s in self.std):
            raise CheckpointError("checkpoint std must be positive")
        if self.tile_size < 32:
            raise CheckpointError(f"checkpoint tile size {self.tile_size} is below 32 px")
        if self.scaling is not None:
            try:
                scaling = Scaling.from_dict(self.scaling)
            except (KeyError, TypeError, ValueError) as exc:
                raise CheckpointError(f"checkpoint scaling is not valid: {exc}") from exc
            if len(scaling.low) != n:
                raise CheckpointError(f"checkpoint scaling does not match its {n} bands")

    def scene_scaling(self) -> Scaling | None:
        """The scaling classify must apply to every scene (``None``: the scene's own default).

        A ``fixed`` or ``training`` scaling maps scene values to what the model was
        trained on; a ``percentile`` one is re-estimated per scene, as classify does anyway.
        """
        if self.scaling is None or self.scaling.get("method") == "percentile":
            return None
        return Scaling.from_dict(self.scaling)


class _BuiltOnFirstUse:
    """The ``model`` field of :class:`LoadedModel`: built from the stored weights
    the first time it is read (building imports torchvision and allocates the
    network; a run whose ONNX graph is cached never needs it)."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.slot = f"_{name}"

    def __get__(self, obj: Any, objtype: type | None = None) -> Any:
        if obj is None:
            return None  # the dataclass default: built on first use
        module = obj.__dict__.get(self.slot)
        if module is None:
            module = obj.__dict__[self.slot] = obj.build_model()
        return module

    def __set__(self, obj: Any, value: nn.Module | None) -> None:
        obj.__dict__[self.slot] = value


@dataclass(eq=False)
class LoadedModel:
    """A model ready for inference, with the metadata it came with.

    ``model`` is the network in eval mode, fp32; :func:`load_checkpoint` leaves it
    to be built from ``state`` the first time it is used (:meth:`weights` gives
    the weights without building it).
    """

    arch: str
    arch_kwargs: dict[str, Any]
    meta: ModelMeta
    path: Path | None = None
    model: nn.Module = _BuiltOnFirstUse()  # type: ignore[assignment]
    state: dict[str, torch.Tensor] | None = field(default=None, repr=False)

    @property
    def label(self) -> str:
        """One-line description used in reports; flags untrained weights."""
        name = self.path.name if self.path else "<memory>"
        return f"{name} ({self.arch}, {self.meta.num_classes} classes, {self.meta.status})"

    @property
    def mixed_precision(self) -> bool:
        """Whether the network has ``forward_mixed``, answered without building it."""
        built = self.__dict__.get("_model")
        if built is not None:
            return callable(getattr(built, "forward_mixed", None))
        return has_mixed_precision(self.arch)

    def weights(self) -> dict[str, torch.Tensor]:
        """The state dict: the built network's, else the stored fp32 weights (equal values)."""
        built = self.__dict__.get("_model")
        if built is not None or self.state is None:
            return self.model.state_dict()
        return self.state

    def build_model(self) -> nn.Module:
        """The network of ``arch`` with the stored weights, eval mode (``state`` is then dropped).

        Raises:
            CheckpointError: the weights do not fit the architecture.
        """
        if self.state is None:
            raise CheckpointError("this model has neither a network nor stored weights")
        meta = self.meta
        model = create_model(
            self.arch, num_classes=meta.num_classes, in_chans=meta.in_chans, **self.arch_kwargs
        )
        try:
            model.load_state_dict(self.state)
        except RuntimeError as exc:
            where = self.path or "<memory>"
            raise CheckpointError(
                f"{where}: weights do not match {self.arch}: {str(exc)[:200]}"
            ) from exc
        self.state = None  # the network holds them now
        return model.eval()


def save_checkpoint(
    path: str | os.PathLike[str],
    model: nn.Module,
    arch: str,
    meta: ModelMeta,
    arch_kwargs: dict[str, Any] | None = None,
    half: bool = False,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint atomically (hidden temporary, fsync, rename; replaces ``path``).

    Args:
        half: store floating-point weights as fp16 (halves the size).
        extra: more top-level entries (optimizer state for resuming...).
    """
    from mscn_geo import __version__

    meta.validate()
    if not meta.version:
        meta.version = __version__
    state = {
        k: (v.half() if half and v.is_floating_point() else v).detach().cpu().clone()
        for k, v in model.state_dict().items()
    }
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "arch": arch,
        "arch_kwargs": dict(arch_kwargs or {}),
        "meta": dataclasses.asdict(meta),
        "state_dict": state,
        **(extra or {}),
    }
    with atomic_file(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def add_checkpoint_metrics(path: str | os.PathLike[str], metrics: dict[str, Any]) -> None:
    """Add ``metrics`` to the checkpoint's ``meta.metrics``, everything else kept as
    stored (weights, their dtype, training state); written atomically."""
    payload = read_checkpoint(path)
    meta = payload.setdefault("meta", {})
    meta["metrics"] = {**meta.get("metrics", {}), **metrics}
    with atomic_file(path) as tmp:
        torch.save(payload, tmp)


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and check a checkpoint file without building the model."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.is_dir():
        raise CheckpointError(f"checkpoint is a directory: {path}")
    _check_archive(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for bad files
        found = re.search(r"GLOBAL (\S+) was not an allowed global", explain(exc, limit=10_000))
        if found:  # a pickled model or other Python objects: a safe load runs none
            raise CheckpointError(
                f"{path} is not an mscn-geo checkpoint: it holds Python objects "
                f"({found[1]}) where a checkpoint has only tensors and plain values"
            ) from exc
        raise CheckpointError(f"{path} is not a readable checkpoint ({explain(exc)})") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an mscn-geo checkpoint")
    if payload.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format {payload['format_version']}; "
            f"this mscn-geo reads up to {FORMAT_VERSION}: upgrade mscn-geo"
        )
    if payload.get("arch") not in list_models():
        raise CheckpointError(f"{path} uses unknown architecture {payload.get('arch')!r}")
    return payload


def _check_archive(path: Path) -> None:
    """A checkpoint is a zip archive; one whose data fails its CRC is corrupt.

    ``torch.load`` does not check the CRCs: a damaged copy would load and give
    wrong classes without a word (about 0.1 s for a 24 MB checkpoint).
    """
    with open(path, "rb") as f:
        if f.read(4) != b"PK\x03\x04":
            raise CheckpointError(
                f"{path} is not a checkpoint: not the zip archive torch.save writes "
                "(another file type, or its start is damaged)"
            )
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except Exception as exc:  # zipfile raises many types for a damaged archive
        raise CheckpointError(f"{path} is corrupt or truncated ({explain(exc)})") from exc
    if bad is not None:
        raise CheckpointError(
            f"{path} is corrupt: its part {bad.rsplit('/', 1)[-1]!r} fails its checksum "
            "(damaged in a copy or on disk?)"
        )


def meta_from_dict(raw: dict[str, Any]) -> ModelMeta:
    known = {f.name for f in dataclasses.fields(ModelMeta)}
    try:
        meta = ModelMeta(**{k: v for k, v in raw.items() if k in known})
    except TypeError as exc:
        raise CheckpointError(f"checkpoint metadata is incomplete: {exc}") from exc
    meta.validate()
    return meta


def load_checkpoint(path: str | os.PathLike[str] | None = None) -> LoadedModel:
    """The model stored in ``path`` (default: the bundled model), in eval mode, fp32.

    The network itself is built on first use (:class:`LoadedModel`); a weight
    that does not fit the architecture raises :class:`CheckpointError` then.
    """
    path = Path(path) if path is not None else BUNDLED_MODEL
    payload = read_checkpoint(path)
    meta = meta_from_dict(payload.get("meta", {}))
    arch, kwargs = payload["arch"], dict(payload.get("arch_kwargs", {}))
    state = {k: v.float() if v.is_floating_point() else v for k, v in payload["state_dict"].items()}
    return LoadedModel(arch=arch, arch_kwargs=kwargs, meta=meta, path=path, state=state)
