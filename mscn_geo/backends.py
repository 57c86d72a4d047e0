"""Inference backends: what runs the model on a normalised batch.

Every backend builds a *runner* with the interface of
:class:`mscn_geo.pipeline.ModelRunner`: ``runner(x)`` takes a normalised
(B, bands, T, T) float32 batch on ``runner.device`` (what
:class:`~mscn_geo.pipeline.Normaliser` makes) and returns (B, classes) float32
softmax probabilities on that device; ``device``, ``amp`` and
``channels_last`` say how the batch must be laid out.

``torch``
    Eager PyTorch (optionally ``torch.compile``), CPU or CUDA, AMP on request.
``torch-bf16``
    Eager PyTorch on the CPU with only the convolutions in bf16 (the model's
    ``forward_mixed``: MSCN's attention fusions, enhancer and head stay float32),
    for CPUs with native bf16 arithmetic (AVX512-BF16 or AMX: :func:`native_bf16`).
    On the bundled model: the same class as fp32 on every one of the 1,680 UC
    Merced images, probabilities within 0.006; the model 1.3x ONNX Runtime
    fp32's speed on 2 cores, the whole command 1.2x (benchmarks/bench_backends.py).
    The CPU default where it applies: for checkpoints that record their own
    agreement with float32 within the bar (``train`` measures it on its validation
    images; :mod:`mscn_geo.mixed_agreement`), the bundled model's included.
``onnxruntime``
    The graph ``mscn-geo export`` writes (:func:`mscn_geo.onnx_export.export_onnx`,
    checked against PyTorch when exported), run by ONNX Runtime's CPU execution
    provider. CPU only, fp32: on the bundled model it gives the same classes as
    PyTorch fp32 on every UC Merced validation tile with probabilities within
    1e-5 (benchmarks/bench_backends.py, README Performance). The graph's top-k
    selections are computed by numpy between two sessions
    (:mod:`mscn_geo.onnx_split`: the same values; the model 1.2x faster on 2 cores).

Candidates measured and *not* offered, because they disagree with fp32 beyond the
project's bar (same class on >= 99.5 % of validation tiles and probabilities
within 0.01): whole-model bf16 autocast on CPU (0.09; still available as ``amp``)
and static int8 quantisation in ONNX Runtime (figures in the README's Performance
section).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.util
import json
import os
import tempfile
import threading
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from mscn_geo.errors import OptionError
from mscn_geo.mixed_agreement import recorded_agreement
from mscn_geo.models.checkpoint import LoadedModel
from mscn_geo.onnx_split import SelectionSplitSession, cached_split
from mscn_geo.pipeline import ModelRunner, prepare_model

# ONNX Runtime sessions by loaded model, dropped with it.
_SESSIONS: weakref.WeakKeyDictionary[LoadedModel, tuple[Any, Any]] = weakref.WeakKeyDictionary()
_SESSIONS_LOCK = threading.Lock()

__all__ = [
    "BACKENDS",
    "OnnxRuntimeRunner",
    "Runner",
    "cache_dir",
    "export_graph",
    "mixed_precision_checked",
    "native_bf16",
    "onnxruntime_available",
    "prepare_runner",
    "resolve_backend",
]

#: Bumped whenever the exported graph changes for the same weights, so cached
#: graphs of an older export are not reused.
GRAPH_REVISION = 2

#: Names accepted by ``--backend`` (``auto`` picks one per device).
BACKENDS = ("auto", "torch", "torch-bf16", "onnxruntime")

#: /proc/cpuinfo flags of native bf16 arithmetic that oneDNN's convolutions use.
_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


class Runner(Protocol):
    """What the prediction loop calls: normalised batch -> probabilities."""

    device: torch.device
    amp: torch.dtype | None
    channels_last: bool
    pixel_input: bool  # takes 0..255 pixel units instead of normalised values

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...


def onnxruntime_available() -> bool:
    """Whether onnxruntime (and the exporter's onnxscript) can be imported."""
    # Looked up, not imported: onnxscript alone takes 0.5 s to import (sympy), and a
    # cached graph never needs it.
    try:
        return all(importlib.util.find_spec(n) is not None for n in ("onnxruntime", "onnxscript"))
    except (ImportError, ValueError):  # blocked (None in sys.modules) or broken
        return False


def native_bf16(cpuinfo: str | os.PathLike[str] = "/proc/cpuinfo") -> bool:
    """Whether this CPU computes in bf16 natively (AVX512-BF16 or AMX; Linux x86).

    Elsewhere bf16 convolutions are emulated and slower than float32, so
    ``torch-bf16`` is not picked by ``auto`` (nor accepted by name).
    """
    return not _BF16_FLAGS.isdisjoint(_cpu_flags(os.fspath(cpuinfo)))


@functools.lru_cache(maxsize=4)
def _cpu_flags(cpuinfo: str) -> frozenset[str]:
    """The first ``flags`` line of a cpuinfo file, read once per process (on a
    many-core machine the kernel takes milliseconds to write the file)."""
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return frozenset()
    flags = next((line for line in text.splitlines() if line.startswith("flags")), "")
    return frozenset(flags.partition(":")[2].split())


def resolve_backend(
    name: str, device: torch.device, amp: torch.dtype | None, model: LoadedModel | None = None
) -> str:
    """The backend that runs ``model`` (asked by its architecture: never built for this).

    ``auto`` on the CPU without AMP: ``torch-bf16`` for a model with
    ``forward_mixed`` whose checkpoint records that it agrees with float32
    (:func:`mixed_precision_checked`) on a CPU with :func:`native_bf16`, else
    ``onnxruntime`` when installed, else ``torch``; with AMP or on CUDA: ``torch``.

    Raises:
        OptionError: unknown name; ``onnxruntime`` or ``torch-bf16`` on CUDA or with
            AMP; ``onnxruntime`` not installed; ``torch-bf16`` for a model without
            ``forward_mixed`` or on a CPU without native bf16.
    """
    name = name.strip().lower()
    if name not in BACKENDS:
        raise OptionError(
            f"backend must be one of {', '.join(BACKENDS)}, got {name!r}", field="backend"
        )
    if name == "auto":
        if device.type != "cpu" or amp is not None:
            return "torch"
        if model is not None and mixed_precision_checked(model) and native_bf16():
            return "torch-bf16"
        return "onnxruntime" if onnxruntime_available() else "torch"
    if name in ("onnxruntime", "torch-bf16"):
        if device.type != "cpu":
            raise OptionError(
                f"backend={name!r} runs on the CPU only (use device='cpu')",
                field=("backend", "device"),
            )
        if amp is not None:
            raise OptionError(
                f"backend={name!r} sets its own precision (use amp=False)",
                field=("backend", "amp"),
            )
    if name == "onnxruntime" and not onnxruntime_available():
        raise OptionError(
            "backend='onnxruntime' needs the onnxruntime and onnxscript packages",
            field="backend",
        )
    if name == "torch-bf16":
        if model is not None and not model.mixed_precision:
            raise OptionError(
                f"backend='torch-bf16' needs a model with mixed precision (MSCN); "
                f"{model.arch} has none (use backend='torch' with amp=True)",
                field="backend",
            )
        if not native_bf16():
            raise OptionError(
                "backend='torch-bf16' needs a CPU with native bf16 (AVX512-BF16 or AMX); "
                "this one would emulate it, slower than float32",
                field="backend",
            )
    return name


def mixed_precision_checked(model: LoadedModel) -> bool:
    """Whether ``model`` has ``forward_mixed`` and its checkpoint records that it
    agrees with float32 within the project's bar (:mod:`mscn_geo.mixed_agreement`).

    Checkpoints written before ``train`` measured it, and models whose record
    misses the bar, are not run in bf16 unless asked for by name.
    """
    if not model.mixed_precision:
        return False
    record = recorded_agreement(model.meta.metrics)
    return record is not None and record.passes


@dataclass
class OnnxRuntimeRunner:
    """An ONNX Runtime session with the :class:`~mscn_geo.pipeline.ModelRunner` interface.

    The exported graph takes 0..255 pixels and normalises inside, so this runner
    takes pixel units (``pixel_input``: the loop's
    :class:`~mscn_geo.pipeline.Normaliser` then only converts to float and puts
    the band mean where pixels are nodata); :meth:`normalised` takes normalised
    batches like the PyTorch runner.
    """

    session: Any  # onnxruntime.InferenceSession, or a SelectionSplitSession
    input_name: str
    scale: torch.Tensor  # (1, bands, 1, 1): normalised = pixels * scale + shift
    shift: torch.Tensor
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    amp: torch.dtype | None = None
    channels_last: bool = False

    pixel_input: bool = True

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """(B, bands, T, T) float32 pixels (0..255) -> (B, classes) float32 probabilities."""
        out = self.session.run(None, {self.input_name: x.contiguous().numpy()})[0]
        return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32))

    def normalised(self, x: torch.Tensor) -> torch.Tensor:
        """The same for a normalised batch (mapped back to pixel units first)."""
        return self((x - self.shift) / self.scale)


def cache_dir() -> Path:
    """Where exported graphs are kept: ``$MSCN_GEO_CACHE``, else ``$XDG_CACHE_HOME/mscn-geo``."""
    if os.environ.get("MSCN_GEO_CACHE"):
        return Path(os.environ["MSCN_GEO_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "mscn-geo"


def _graph_key(model: LoadedModel, tile_size: int) -> str:
    """Digest of everything the exported graph depends on: weights, config, tile, versions."""
    from mscn_geo import __version__
    from mscn_geo.resume import model_digest

    digest = hashlib.sha256(model_digest(None, model.weights()).encode())
    config = [model.arch, model.arch_kwargs, model.meta.mean, model.meta.std, tile_size]
    versions = [__version__, GRAPH_REVISION, torch.__version__]
    digest.update(json.dumps([config, *versions], default=str).encode())
    return digest.hexdigest()[:32]


def export_graph(model: LoadedModel, tile_size: int) -> Path:
    """The classifier graph of ``model`` at ``tile_size``, exported once per cache.

    Exporting takes seconds; the graph is kept under :func:`cache_dir` by a digest
    of the weights and settings, so later runs only load it. Without a writable
    cache it is exported to a temporary folder each time.
    """
    from mscn_geo.onnx_export import export_onnx

    path = cache_dir() / "onnx" / f"{model.arch}-{_graph_key(model, tile_size)}.onnx"
    if path.is_file():
        return path
    meta = dataclasses.replace(model.meta, tile_size=tile_size)
    sized = dataclasses.replace(model, meta=meta)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        export_onnx(path, sized, exporter="torchscript", overwrite=True)
    except OSError:
        path = Path(tempfile.mkdtemp(prefix="mscn-geo-onnx-")) / "model.onnx"
        export_onnx(path, sized, exporter="torchscript", overwrite=True)
    return path


def _onnxruntime_runner(model: LoadedModel, tile_size: int, threads: int) -> OnnxRuntimeRunner:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # Idle intra-op threads sleep instead of spinning: the reader threads share the
    # cores. Measured side by side (2 cores, loaded): 13 % less CPU time per tile,
    # wall time the same or better.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    path = export_graph(model, tile_size)
    providers = ["CPUExecutionProvider"]
    split = cached_split(path)
    session: Any = (
        SelectionSplitSession(split, options, providers, threads)
        if split is not None
        else ort.InferenceSession(str(path), options, providers=providers)
    )
    mean = torch.tensor(model.meta.mean, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(model.meta.std, dtype=torch.float32).view(1, -1, 1, 1)
    name = session.get_inputs()[0].name
    return OnnxRuntimeRunner(session, name, 1.0 / (255.0 * std), -mean / std)


def prepare_runner(
    model: LoadedModel,
    device: torch.device,
    amp: torch.dtype | None,
    *,
    backend: str = "auto",
    tile_size: int | None = None,
    channels_last: bool = True,
    compile: bool = False,
    threads: int | None = None,
) -> Runner:
    """The runner of ``backend`` for ``model`` (prepared once per model and settings).

    The ONNX Runtime session is kept while the model lives (a weak-keyed table:
    nothing is stored on the caller's module), so a batch of scenes builds it once.

    Args:
        backend: one of :data:`BACKENDS`.
        tile_size: edge of the tiles the model will see (ONNX graphs have a fixed
            tile size); default: the model's.
        threads: ONNX Runtime intra-op threads (default: ``torch.get_num_threads()``).
    """
    chosen = resolve_backend(backend, device, amp, model)
    if chosen in ("torch", "torch-bf16"):
        mixed = torch.bfloat16 if chosen == "torch-bf16" else None
        runner: ModelRunner = prepare_model(
            model.model, device, amp, channels_last, compile, mixed=mixed
        )
        return runner
    key = (tile_size or model.meta.tile_size, threads or torch.get_num_threads())
    with _SESSIONS_LOCK:
        cached = _SESSIONS.get(model)
    if cached is not None and cached[0] == key:
        return cached[1]
    ort_runner = _onnxruntime_runner(model, *key)
    with _SESSIONS_LOCK:
        _SESSIONS[model] = (key, ort_runner)
    return ort_runner
