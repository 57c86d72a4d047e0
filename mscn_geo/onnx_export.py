"""Export a checkpoint as ONNX, its metadata in the form the QGIS plugin Deepness reads.

Two graphs, both with a dynamic batch axis and a fixed tile size (the MSC
top-k counts depend on the feature-map size, so the tile size is part of the
graph):

``classifier`` (default)
    input ``pixels``: float32 (N, bands, T, T), pixel values in the uint8 range
    0..255 (an mscn-geo tile cast to float); the model's mean/std
    normalisation is inside the graph. Output ``probabilities``: (N, classes),
    softmax. This is what ``mscn-geo classify`` computes for a tile.

``deepness``
    Deepness has no tile-classifier type, so this variant is a "Segmentor":
    input ``image``: float32 (N, bands, T, T) already standardised the way
    Deepness does it (``(x / 255 - standardization_mean) / standardization_std``,
    the model's mean/std, both in the metadata); output ``probabilities``:
    (N, classes, T, T), each tile's class probabilities spread over its pixels,
    so Deepness's per-pixel argmax gives the tile's class everywhere in it.

Metadata (``metadata_props``, every value JSON-encoded as Deepness expects):
``model_type``, ``class_names`` (``{"0": name, ...}``), ``resolution`` (cm/px),
``tile_size``, ``tiles_overlap``, ``standardization_mean``,
``standardization_std``, ``seg_thresh`` and ``seg_small_segment`` (0: off,
Deepness variant only), and ``mscn_geo`` (architecture, bands, the model's own
mean/std, input/output conventions, training status). For the classifier
graph the standardisation keys are mean 0 and std 1/255, so a consumer that
follows Deepness's convention feeds exactly the 0..255 values the graph takes.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from mscn_geo.errors import OptionError
from mscn_geo.models.checkpoint import LoadedModel, ModelMeta, load_checkpoint

__all__ = ["EXPORTERS", "OPSET", "VARIANTS", "OnnxExport", "export_onnx", "onnx_metadata"]

OPSET = 18
VARIANTS = ("classifier", "deepness")
#: torch's exporters: ``dynamo`` (torch.export based, the default and torch's
#: recommended one) and ``torchscript`` (the legacy tracer: same graph
#: semantics, about 3-10x faster to export, deprecated by torch).
EXPORTERS = ("dynamo", "torchscript")
#: Largest |p_onnx - p_torch| the export accepts on its check tiles.
PARITY_TOLERANCE = 1e-4
_CHECK_BATCH = 2  # also the example batch: torch.export specialises a batch of 1


class _ClassifierGraph(nn.Module):
    """0..255 pixels -> normalised -> model -> softmax, (N, bands, T, T) -> (N, classes)."""

    def __init__(self, model: nn.Module, meta: ModelMeta) -> None:
        super().__init__()
        self.model = model
        mean = torch.tensor(meta.mean, dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.tensor(meta.std, dtype=torch.float32).view(1, -1, 1, 1)
        # The same multiply-add as mscn_geo.pipeline.Normaliser.
        self.register_buffer("scale", 1.0 / (255.0 * std))
        self.register_buffer("shift", -mean / std)

    def forward(self, pixels: Tensor) -> Tensor:
        return self.model(pixels * self.scale + self.shift).softmax(-1)


class _DeepnessGraph(nn.Module):
    """Standardised image -> model -> softmax spread over the tile, (N, classes, T, T)."""

    def __init__(self, model: nn.Module, tile_size: int) -> None:
        super().__init__()
        self.model = model
        self.tile_size = tile_size

    def forward(self, image: Tensor) -> Tensor:
        p = self.model(image).softmax(-1)
        # A constant size, not image.shape: Deepness needs a static square output.
        return p[:, :, None, None].expand(-1, -1, self.tile_size, self.tile_size)


@dataclass
class OnnxExport:
    """What :func:`export_onnx` wrote; ``to_dict()`` is the ``--json`` line."""

    path: Path
    variant: str
    input_name: str
    input_shape: list[int | str]
    output_shape: list[int | str]
    seconds: float
    size_bytes: int
    max_abs_diff: float
    model_label: str
    metadata: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "onnx": str(self.path),
            "variant": self.variant,
            "input": {"name": self.input_name, "shape": self.input_shape},
            "output": {"name": "probabilities", "shape": self.output_shape},
            "seconds": round(self.seconds, 3),
            "size_bytes": self.size_bytes,
            "parity_max_abs_diff": self.max_abs_diff,
            "model": self.model_label,
            "metadata": dict(self.metadata),
        }


def onnx_metadata(loaded: LoadedModel, variant: str) -> dict[str, str]:
    """``metadata_props`` for an export of ``loaded``: keys and JSON values as Deepness reads."""
    meta = loaded.meta
    n = meta.in_chans
    deepness = variant == "deepness"
    mean = list(meta.mean) if deepness else [0.0] * n
    std = list(meta.std) if deepness else [1.0 / 255.0] * n
    input_doc = (
        "float32 (N, bands, T, T): (pixel / 255 - standardization_mean) / standardization_std"
        if deepness
        else "float32 (N, bands, T, T): pixel values 0..255, normalised inside the graph"
    )
    output_doc = (
        "float32 (N, classes, T, T): the tile's class probabilities at every pixel"
        if deepness
        else "float32 (N, classes): class probabilities (softmax)"
    )
    own = {
        "variant": variant,
        "arch": loaded.arch,
        "arch_kwargs": loaded.arch_kwargs,
        "bands": list(meta.bands),
        "mean": list(meta.mean),
        "std": list(meta.std),
        "pixel_size_m": meta.pixel_size_m,
        "input": input_doc,
        "output": output_doc,
        "trained": meta.trained,
        "version": meta.version,
    }
    props = {
        "model_type": "Segmentor" if deepness else "Classifier",
        "class_names": {str(i): name for i, name in enumerate(meta.class_names)},
        "resolution": round(meta.pixel_size_m * 100.0, 6),
        "tile_size": meta.tile_size,
        "tiles_overlap": 0,
        "standardization_mean": mean,
        "standardization_std": std,
        "mscn_geo": own,
    }
    if deepness:
        # Off: Deepness would otherwise zero probabilities below 0.5 before its
        # argmax, and median-filter the class map.
        props["seg_thresh"] = 0.0
        props["seg_small_segment"] = 0
    return {key: json.dumps(value) for key, value in props.items()}


def _check_input(meta: ModelMeta, deepness: bool, seed: int = 0) -> Tensor:
    """Check tiles: random 0..255 pixels (standardised for the Deepness graph)."""
    g = torch.Generator().manual_seed(seed)
    shape = (_CHECK_BATCH, meta.in_chans, meta.tile_size, meta.tile_size)
    x = torch.randint(0, 256, shape, generator=g).float()
    if deepness:
        mean = torch.tensor(meta.mean).view(1, -1, 1, 1)
        std = torch.tensor(meta.std).view(1, -1, 1, 1)
        x = (x / 255.0 - mean) / std
    return x


def _max_abs_diff(path: Path, graph: nn.Module, x: Tensor) -> float:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.inference_mode():
        want = graph(x).numpy()
    return float(np.abs(got - want).max())


def _export_dynamo(graph: nn.Module, x: Tensor, input_name: str, path: Path, opset: int) -> None:
    program = torch.onnx.export(
        graph,
        (x,),
        dynamo=True,
        input_names=[input_name],
        output_names=["probabilities"],
        dynamic_shapes={input_name: {0: torch.export.Dim("batch", min=1)}},
        opset_version=opset,
        external_data=False,
        verbose=False,
    )
    program.save(path, external_data=False)


def _export_torchscript(
    graph: nn.Module, x: Tensor, input_name: str, path: Path, opset: int
) -> None:
    torch.onnx.export(
        graph,
        (x,),
        str(path),
        dynamo=False,
        input_names=[input_name],
        output_names=["probabilities"],
        dynamic_axes={input_name: {0: "batch"}, "probabilities": {0: "batch"}},
        opset_version=opset,
    )


def _set_metadata(path: Path, metadata: dict[str, str], doc: str) -> None:
    import onnx

    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.doc_string = doc
    onnx.save(proto, str(path))


def export_onnx(
    out: str | os.PathLike[str],
    checkpoint: str | os.PathLike[str] | LoadedModel | None = None,
    *,
    variant: str = "classifier",
    exporter: str = "dynamo",
    overwrite: bool = False,
    opset: int = OPSET,
) -> OnnxExport:
    """Export ``checkpoint`` (default: the bundled model) to the ONNX file ``out``.

    The file is written under a temporary name, checked in onnxruntime against
    PyTorch on two random tiles (probabilities within :data:`PARITY_TOLERANCE`)
    and only then renamed to ``out``: an error leaves nothing behind.

    Args:
        variant: ``"classifier"`` or ``"deepness"`` (see the module docstring).
        exporter: one of :data:`EXPORTERS`.
        overwrite: replace an existing ``out``.

    Raises:
        CheckpointError: missing, corrupt or not an mscn-geo checkpoint.
        OptionError: unknown variant, ``out`` without the ``.onnx`` suffix.
        OutputError: ``out`` exists (without ``overwrite``), folder missing or
            not writable, disk full.
        RuntimeError: the exported graph disagrees with PyTorch (a bug).
    """
    from mscn_geo.io.atomic import atomic_outputs

    if variant not in VARIANTS:
        raise OptionError(f"unknown ONNX variant {variant!r}; known: {', '.join(VARIANTS)}")
    if exporter not in EXPORTERS:
        raise OptionError(f"unknown exporter {exporter!r}; known: {', '.join(EXPORTERS)}")
    out = Path(out)
    if out.suffix.lower() != ".onnx":
        raise OptionError(f"the ONNX file {out} must end in .onnx")
    start = time.perf_counter()
    loaded = checkpoint if isinstance(checkpoint, LoadedModel) else load_checkpoint(checkpoint)
    meta = loaded.meta
    deepness = variant == "deepness"
    model = loaded.model.eval().float().to(memory_format=torch.contiguous_format)
    graph = _DeepnessGraph(model, meta.tile_size) if deepness else _ClassifierGraph(model, meta)
    graph.eval()
    input_name = "image" if deepness else "pixels"
    x = _check_input(meta, deepness)
    metadata = onnx_metadata(loaded, variant)
    doc = f"mscn-geo {variant} export of {loaded.label}; input: "
    doc += json.loads(metadata["mscn_geo"])["input"]
    with atomic_outputs([out], overwrite=overwrite) as (temp,):
        # The exporters report their steps on stdout and warn about things that
        # do not concern this graph; the library prints nothing.
        with (
            contextlib.redirect_stdout(io.StringIO()),
            warnings.catch_warnings(),
            torch.no_grad(),
        ):
            warnings.simplefilter("ignore")
            if exporter == "dynamo":
                _export_dynamo(graph, x, input_name, temp, opset)
            else:
                _export_torchscript(graph, x, input_name, temp, opset)
        _set_metadata(temp, metadata, doc)
        diff = _max_abs_diff(temp, graph, x)
        if not diff <= PARITY_TOLERANCE:
            raise RuntimeError(
                f"ONNX export disagrees with PyTorch: max |dp| {diff:.3g} > {PARITY_TOLERANCE}"
            )
    t = meta.tile_size
    out_shape: list[int | str] = ["batch", meta.num_classes] + ([t, t] if deepness else [])
    return OnnxExport(
        path=out,
        variant=variant,
        input_name=input_name,
        input_shape=["batch", meta.in_chans, t, t],
        output_shape=out_shape,
        seconds=time.perf_counter() - start,
        size_bytes=out.stat().st_size,
        max_abs_diff=diff,
        model_label=loaded.label,
        metadata=metadata,
    )
