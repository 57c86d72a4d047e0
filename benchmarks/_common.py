"""Shared helpers for the benchmark scripts: scenes, models, machine facts, JSON.

Every benchmark writes one JSON file with a ``machine`` block (CPU count, load
average before and after, torch/GDAL versions, GPU name) so that figures are
never read without the conditions they were taken under.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import resource
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as ``python benchmarks/x.py`` without installing
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402


def machine(device: torch.device) -> dict[str, Any]:
    """Facts about where a benchmark ran (call at the start, then add ``load_after``)."""
    info: dict[str, Any] = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "cpu": platform.processor() or platform.machine(),
        "nproc": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_before": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": str(device),
    }
    try:
        import rasterio

        info["rasterio"] = rasterio.__version__
        info["gdal"] = rasterio.__gdal_version__
    except ImportError:
        info["rasterio"] = None
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def finish(result: dict[str, Any], out: Path | None) -> dict[str, Any]:
    """Add the load average after the run and write ``out`` (JSON) when given."""
    result["machine"]["load_after"] = [round(x, 2) for x in os.getloadavg()]
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
    return result


def peak_rss_mb() -> float:
    """This process's peak resident set size so far, in MiB (Linux: ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class RssSampler:
    """Polls the RSS of this process (and its children) in a thread; ``peak_mb`` after stop.

    Unlike ``ru_maxrss`` this gives the peak of one phase of a run, so two
    pipelines measured in the same process each get their own figure. Without
    psutil (a bare GPU machine) only this process is polled, from /proc.
    """

    def __init__(self, interval_s: float = 0.02) -> None:
        try:
            import psutil

            self._proc: Any = psutil.Process()
        except ImportError:
            self._proc = None
        self.counts_children = self._proc is not None
        self._interval = interval_s
        self._stop = threading.Event()
        self.peak_bytes = 0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _rss(self) -> int:
        if self._proc is None:
            pages = int(Path("/proc/self/statm").read_text().split()[1])
            return pages * os.sysconf("SC_PAGE_SIZE")
        total = self._proc.memory_info().rss
        for child in self._proc.children(recursive=True):
            with contextlib.suppress(Exception):  # child exited meanwhile
                total += child.memory_info().rss
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_bytes = max(self.peak_bytes, self._rss())
            self._stop.wait(self._interval)

    def __enter__(self) -> RssSampler:
        self.peak_bytes = self._rss()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_bytes = max(self.peak_bytes, self._rss())

    @property
    def peak_mb(self) -> float:
        return self.peak_bytes / 2**20


class GpuSampler:
    """GPU utilisation (%, sampled every 0.2 s) and peak allocated memory of a CUDA phase.

    ``torch.cuda.utilization`` (needs the nvidia-ml-py package), else ``nvidia-smi``.
    On the CPU it records nothing and ``summary()`` is empty.
    """

    def __init__(self, device: torch.device, interval_s: float = 0.2) -> None:
        self.device = device
        self.samples: list[float] = []
        self._interval = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _utilisation(self) -> float | None:
        try:
            return float(torch.cuda.utilization(self.device))
        except Exception:  # no NVML bindings: ask nvidia-smi
            import subprocess

            index = self.device.index or 0
            cmd = ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"]
            try:
                out = subprocess.run(cmd, capture_output=True, text=True, timeout=5, check=True)
                return float(out.stdout.splitlines()[index])
            except Exception:
                return None

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            value = self._utilisation()
            if value is not None:
                self.samples.append(value)

    def __enter__(self) -> GpuSampler:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            self._stop.set()
            self._thread.join()

    def summary(self) -> dict[str, Any]:
        if self.device.type != "cuda":
            return {}
        mean = sum(self.samples) / len(self.samples) if self.samples else None
        return {
            "gpu_utilisation_mean_pct": None if mean is None else round(mean, 1),
            "gpu_utilisation_samples": len(self.samples),
            "gpu_peak_allocated_mib": round(torch.cuda.max_memory_allocated(self.device) / 2**20),
        }


def write_scene(
    path: Path,
    size: int,
    block: int = 256,
    bands: int = 3,
    compress: str = "deflate",
    zlevel: int = 6,
    seed: int = 0,
) -> Path:
    """A ``size`` x ``size`` uint8 tiled GeoTIFF, EPSG:32633, nodata 0, written fast.

    Pixels are 0.5 m: exact in binary, so TorchGeo's map-unit grid has the same
    tiles as ours (0.3 m gives it an extra row and column from rounding).

    The content is a cheap pattern (a brightness per 64 px cell plus a little
    noise from a small repeated array) so tiles differ, compression is fast and a
    30,000 px scene is written in seconds; it is written in strips of blocks.
    """
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    rng = np.random.default_rng(seed)
    # Noise repeating every 8 rows and 64 columns: deflate finds the repeats.
    noise = rng.integers(0, 24, (bands, 8, 64), dtype=np.uint8)
    profile = {
        "driver": "GTiff",
        "width": size,
        "height": size,
        "count": bands,
        "dtype": "uint8",
        "crs": "EPSG:32633",
        "transform": from_origin(500_000.0, 5_000_000.0, 0.5, 0.5),
        "nodata": 0,
        "tiled": True,
        "blockxsize": block,
        "blockysize": block,
        "compress": compress,
        **({"zlevel": zlevel} if compress == "deflate" else {}),
        "interleave": "pixel",
    }
    cols = np.arange(size) // 64
    with rasterio.open(path, "w", **profile) as dst:
        for y0 in range(0, size, block):
            h = min(block, size - y0)
            cell_rows = (np.arange(y0, y0 + h) // 64)[:, None]
            # 20..170, + noise and band offset: at most 233, never the nodata value 0.
            base = ((cols[None, :] * 3 + cell_rows * 5) % 7 * 25 + 20).astype(np.uint8)
            reps = (-(-h // 8), -(-size // 64))
            pattern = np.tile(noise, (1, *reps))[:, :h, :size]
            strip = base[None] + pattern + (np.arange(bands, dtype=np.uint8) * 20)[:, None, None]
            dst.write(strip, window=Window(0, y0, size, h))
    return path


def random_model(
    tile_size: int = 256, num_classes: int = 21, arch: str = "mscn_resnet18", seed: int = 0
) -> Any:
    """The bundled architecture with random weights (speed does not depend on the weights)."""
    from mscn_geo.models import LoadedModel, ModelMeta, create_model

    torch.manual_seed(seed)
    net = create_model(arch, num_classes=num_classes).eval()
    meta = ModelMeta(class_names=[f"class_{i}" for i in range(num_classes)], tile_size=tile_size)
    return LoadedModel(arch=arch, arch_kwargs={}, meta=meta, model=net)


class _MeanColour(torch.nn.Module):
    """The cheapest possible classifier: mean colour -> linear layer (I/O-bound runs)."""

    def __init__(self, in_chans: int, num_classes: int) -> None:
        super().__init__()
        self.head = torch.nn.Linear(in_chans, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x.mean(dim=(2, 3)))


def cheap_model(tile_size: int = 256, num_classes: int = 21) -> Any:
    """A model whose compute is negligible, to time the read/normalise/write path alone."""
    from mscn_geo.models import LoadedModel, ModelMeta

    torch.manual_seed(0)
    meta = ModelMeta(class_names=[f"class_{i}" for i in range(num_classes)], tile_size=tile_size)
    net = _MeanColour(3, num_classes).eval()
    return LoadedModel(arch="mean_colour", arch_kwargs={}, meta=meta, model=net)


def timed(fn: Any, *args: Any, **kwargs: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    value = fn(*args, **kwargs)
    return value, time.perf_counter() - start


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
