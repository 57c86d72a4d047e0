"""Classify on a Dask cluster: many scenes, and huge scenes split into blocks of tile rows.

``mscn-geo classify --scheduler tcp://host:8786`` (an existing cluster) or
``--cluster local[:N]`` (N worker processes on this machine) run the model on
Dask (``pip install 'mscn-geo[dask]'``) instead of in this process:

* The client opens and checks every scene (:func:`~mscn_geo.plan.plan_scene`:
  header, bands, scaling, tile grid) and submits one task per block of tile rows
  (:func:`block_rows`: 64-256 tiles a task, so a small scene is one task and a
  huge one is many). Tasks of earlier scenes get a higher priority.
* A task (:func:`predict_block`) reads its tiles from the scene path itself (the
  scene must be at the same path on every worker: a shared filesystem), runs
  :func:`~mscn_geo.predict.predict_tiles` on those rows with the model loaded once per
  worker process (:func:`worker_model`, keyed by checkpoint path and SHA-256),
  and returns only per-tile results (class ids, probabilities, nodata fractions:
  a few bytes a tile). Tasks have no side effects, so running one twice (a
  worker died, ``retries``) gives the same result.
* The client gathers a scene's blocks, checks that every (row, col) tile came
  back exactly once (:func:`merge_blocks`), and writes ``<scene>.gpkg`` and
  ``<scene>_classes.tif`` with :func:`~mscn_geo.classify.classify_scene`'s own
  writing code (atomically), one scene after the other in argument order while
  the workers go on with the next scenes. Outputs are the same as a local run's.

A worker that dies mid-task has its tasks re-run on another worker by the
scheduler (up to ``distributed.scheduler.allowed-failures`` times, then the
scene fails with :class:`ClusterError`). Dask is imported only here and only
when a cluster is asked for.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from mscn_geo.classify import classify_scene
from mscn_geo.errors import CheckpointError, MscnGeoError, OptionError
from mscn_geo.models.checkpoint import LoadedModel
from mscn_geo.options import ClassifyOptions
from mscn_geo.outputs import SceneResult
from mscn_geo.plan import ScenePlan, check_scene_list, plan_scene
from mscn_geo.predict import ProgressCallback, TileResult, predict_tiles
from mscn_geo.reader import SceneInfo
from mscn_geo.tiling import TileGrid

if TYPE_CHECKING:
    from distributed import Client, Future

    from mscn_geo.batch import SceneOutcome

__all__ = [
    "BlockResult",
    "ClusterError",
    "ModelRef",
    "block_rows",
    "block_tiles",
    "classify_scenes_on_cluster",
    "connect",
    "local_cluster",
    "merge_blocks",
    "parse_cluster",
    "predict_block",
    "worker_model",
]

#: Tiles per task: fewer and the per-task overhead (~10 ms) shows; more and a
#: dead worker costs more work again and a huge scene spreads over fewer workers.
MIN_TILES_PER_TASK = 64
MAX_TILES_PER_TASK = 256
#: Re-runs of a task that raised (e.g. a shared filesystem hiccup); a task whose
#: worker died is re-run by the scheduler whatever this is.
RETRIES = 2
#: How long to try reaching a ``--scheduler`` before giving up.
CONNECT_TIMEOUT = "20s"
_INSTALL_HINT = "a scheduler or cluster run needs Dask: pip install 'mscn-geo[dask]'"


class ClusterError(MscnGeoError):
    """The cluster cannot be reached, or it lost the same task too many times."""


@dataclass(frozen=True)
class ModelRef:
    """A checkpoint as workers find it: a path on the shared filesystem and its SHA-256."""

    path: str
    sha256: str

    @classmethod
    def of(cls, model: LoadedModel) -> ModelRef:
        from mscn_geo.resume import model_digest

        if model.path is None:
            raise OptionError(
                "a Dask run needs the model as a checkpoint file (model=PATH)", field="model"
            )
        path = Path(model.path).resolve()
        return cls(str(path), model_digest(path))


_MODELS: dict[tuple[str, str], LoadedModel] = {}
_MODELS_LOCK = threading.Lock()


def worker_model(ref: ModelRef) -> LoadedModel:
    """The model of ``ref``, loaded once per (worker) process and kept.

    Raises:
        CheckpointError: the file at ``ref.path`` is missing here or is not the
            client's checkpoint (different SHA-256: not a shared filesystem?).
    """
    from mscn_geo.models import load_checkpoint
    from mscn_geo.resume import model_digest

    key = (ref.path, ref.sha256)
    with _MODELS_LOCK:
        cached = _MODELS.get(key)
        if cached is not None:
            return cached
        path = Path(ref.path)
        if not path.is_file():
            raise CheckpointError(
                f"checkpoint {path} not found on worker {os.uname().nodename}: workers need "
                "the scenes and the model at the same paths as the client (shared filesystem)"
            )
        if model_digest(path) != ref.sha256:
            raise CheckpointError(
                f"checkpoint {path} on worker {os.uname().nodename} differs from the client's"
            )
        loaded = load_checkpoint(path)
        _MODELS[key] = loaded
        return loaded


@dataclass
class BlockResult:
    """Per-tile results of one block of a scene (what a task sends back)."""

    rows: np.ndarray  # (m,) int32 tile row
    cols: np.ndarray  # (m,) int32 tile column
    class_ids: np.ndarray  # (m,) uint8, 255 for skipped tiles
    probs: np.ndarray  # (m, classes) float32, NaN for skipped tiles
    nodata_fraction: np.ndarray  # (m,) float32
    device: torch.device
    amp: torch.dtype | None
    seconds: float
    pid: int


def predict_block(
    ref: ModelRef,
    info: SceneInfo,
    grid: TileGrid,
    row0: int,
    row1: int,
    options: ClassifyOptions,
    torch_threads: int | None = None,
) -> BlockResult:
    """The Dask task: classify tile rows ``row0..row1-1`` of a scene (no side effects).

    Only the block's own tiles are laid out (:meth:`TileGrid.iter_tiles`), so a
    task costs its tiles whatever the scene size.

    Args:
        torch_threads: CPU threads for the model in this worker (``None``: unchanged).
    """
    start = time.perf_counter()
    if torch_threads:
        torch.set_num_threads(torch_threads)
    model = worker_model(ref)
    cols = grid.shape[1]
    part, device, amp = predict_tiles(info, grid, model, options, span=(row0 * cols, row1 * cols))
    return BlockResult(
        rows=np.array([t.row for t in part.tiles], dtype=np.int32),
        cols=np.array([t.col for t in part.tiles], dtype=np.int32),
        class_ids=part.class_ids,
        probs=part.probs,
        nodata_fraction=part.nodata_fraction,
        device=device,
        amp=amp,
        seconds=time.perf_counter() - start,
        pid=os.getpid(),
    )


def block_rows(grid: TileGrid, tiles_per_task: int) -> list[tuple[int, int]]:
    """``[(row0, row1), ...]``: the grid's tile rows cut into blocks of about ``tiles_per_task``."""
    rows, cols = grid.shape
    step = max(1, round(tiles_per_task / cols))
    return [(r, min(r + step, rows)) for r in range(0, rows, step)]


def block_tiles(grid: TileGrid, rows: tuple[int, int]) -> int:
    """Tiles in the block of tile rows ``rows`` (by arithmetic: no tile is laid out)."""
    return (rows[1] - rows[0]) * grid.shape[1]


def tiles_per_task(total_tiles: int, workers: int) -> int:
    """64-256 tiles: at least ~4 tasks per worker over the job when it is big enough."""
    want = math.ceil(total_tiles / max(1, 4 * workers))
    return min(MAX_TILES_PER_TASK, max(MIN_TILES_PER_TASK, want))


def merge_blocks(grid: TileGrid, blocks: list[BlockResult], num_classes: int) -> TileResult:
    """One scene's per-tile results in grid order from its blocks (any order).

    Raises:
        ClusterError: a tile is missing or came back more than once (never
            expected: checked so that a wrong merge can never be written).
    """
    result = TileResult.empty(grid.tiles(), num_classes)
    n, cols = len(grid), grid.shape[1]
    seen = np.zeros(n, dtype=np.int64)
    for block in blocks:
        index = block.rows.astype(np.int64) * cols + block.cols
        np.add.at(seen, index, 1)
        result.class_ids[index] = block.class_ids
        result.probs[index] = block.probs
        result.nodata_fraction[index] = block.nodata_fraction
    if (seen != 1).any():
        lost, twice = int((seen == 0).sum()), int((seen > 1).sum())
        raise ClusterError(
            f"internal error: {lost} tile(s) missing and {twice} duplicated in the merged "
            "results; nothing was written"
        )
    return result


def parse_cluster(text: str) -> int | None:
    """``local`` -> ``None`` (one worker per GPU, else per CPU core); ``local:N`` -> N."""
    name, _, count = text.strip().partition(":")
    if name != "local":
        raise OptionError(f"cluster must be local or local:N, got {text!r}", field="cluster")
    if not count:
        return None
    try:
        n = int(count)
    except ValueError:
        n = 0
    if n < 1:
        raise OptionError(
            f"cluster local:N needs a worker count of 1 or more, got {count!r}", field="cluster"
        )
    return n


def _import_distributed() -> Any:
    try:
        import distributed
    except ImportError as exc:
        raise OptionError(_INSTALL_HINT, field=("scheduler", "cluster")) from exc
    return distributed


def local_cluster(workers: int | None = None) -> tuple[Any, int | None]:
    """Start worker processes (one thread each) on this machine: ``(cluster, torch_threads)``.

    With CUDA GPUs: one worker per GPU, each seeing only its own GPU (dask-cuda's
    ``LocalCUDACluster`` when installed, else ``CUDA_VISIBLE_DEVICES`` set per
    worker); more workers than GPUs is refused. Without: ``workers`` (default:
    the CPU count) CPU workers sharing the cores (``torch_threads`` per worker).
    """
    import logging

    distributed = _import_distributed()
    common = {
        "threads_per_worker": 1,
        "dashboard_address": None,
        "silence_logs": logging.ERROR,
        # Workers import torch and the library before they join, not in the first task.
        "preload": [__name__],
    }
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus:
        n = gpus if workers is None else workers
        if n > gpus:
            raise OptionError(
                f"cluster='local:{n}': one worker per GPU, and there are {gpus}", field="cluster"
            )
        visible = ",".join(str(i) for i in range(n))
        with contextlib.suppress(ImportError):
            from dask_cuda import LocalCUDACluster

            return LocalCUDACluster(CUDA_VISIBLE_DEVICES=visible, **common), None
        return _pinned_gpu_cluster(distributed, n), None
    n = (os.cpu_count() or 1) if workers is None else workers
    cluster = distributed.LocalCluster(n_workers=n, processes=True, **common)
    return cluster, max(1, (os.cpu_count() or 1) // n)


def _pinned_gpu_cluster(distributed: Any, n: int) -> Any:
    # What LocalCUDACluster does at its simplest: worker i sees GPU i only (as cuda:0).
    workers = {
        i: {
            "cls": distributed.Nanny,
            "options": {
                "nthreads": 1,
                "env": {"CUDA_VISIBLE_DEVICES": str(i)},
                "preload": [__name__],
            },
        }
        for i in range(n)
    }
    scheduler = {"cls": distributed.Scheduler, "options": {"dashboard_address": None}}
    return distributed.SpecCluster(workers=workers, scheduler=scheduler, silence_logs=40)


@contextlib.contextmanager
def connect(
    scheduler: str | None = None, cluster: str | None = None
) -> Iterator[tuple[Client, int | None]]:
    """``(client, torch_threads)`` for ``--scheduler ADDRESS`` or ``--cluster local[:N]``.

    Raises:
        OptionError: both or neither given, a bad ``--cluster``, Dask not installed.
        ClusterError: the scheduler cannot be reached.
    """
    if (scheduler is None) == (cluster is None):
        raise OptionError(
            "give one of scheduler=ADDRESS or cluster='local[:N]'", field=("scheduler", "cluster")
        )
    distributed = _import_distributed()
    if scheduler is not None:
        try:
            client = distributed.Client(scheduler, timeout=CONNECT_TIMEOUT)
        except (OSError, TimeoutError) as exc:
            raise ClusterError(f"cannot reach the Dask scheduler at {scheduler}: {exc}") from exc
        with client:
            yield client, None
        return
    local, threads = local_cluster(parse_cluster(cluster))  # type: ignore[arg-type]
    with local, distributed.Client(local) as client:
        yield client, threads


@dataclass
class _SceneWork:
    plan: ScenePlan | None = None
    error: MscnGeoError | None = None
    futures: list[Future] = field(default_factory=list)


class _Job:
    """The scenes of one run as submitted tasks; classifies them one by one on request."""

    def __init__(
        self,
        client: Client,
        model: LoadedModel,
        options: ClassifyOptions,
        *,
        torch_threads: int | None,
        task_tiles: int | None,
    ) -> None:
        self.client, self.model, self.options = client, model, options
        self.ref = ModelRef.of(model)
        self.torch_threads, self.task_tiles = torch_threads, task_tiles
        self.work: dict[Path, _SceneWork] = {}
        self.total = 0
        self.done = 0
        self.progress: ProgressCallback | None = None
        self._lock = threading.Lock()
        self._run = uuid.uuid4().hex[:8]
        self.start = time.perf_counter()

    def plan(self, scenes: list[Path]) -> None:
        from mscn_geo.io import output_paths
        from mscn_geo.io.atomic import check_destination

        for scene in scenes:
            work = self.work[scene] = _SceneWork()
            try:
                work.plan = plan_scene(scene, self.model.meta, self.options)
                # Refused now rather than after the cluster did the work.
                finals = output_paths(
                    scene, Path(self.options.out_dir), quicklook=self.options.quicklook
                )
                if Path(self.options.out_dir).is_dir():
                    check_destination(list(finals.values()), self.options.overwrite)
            except MscnGeoError as exc:
                work.error, work.plan = exc, None
            else:
                self.total += len(work.plan.grid)

    def submit(self) -> None:
        workers = len(self.client.scheduler_info(n_workers=-1)["workers"]) or 1
        per_task = self.task_tiles or tiles_per_task(self.total, workers)
        planned = [(s, w) for s, w in self.work.items() if w.plan is not None]
        for order, (scene, work) in enumerate(planned):
            plan = work.plan
            assert plan is not None
            for row0, row1 in block_rows(plan.grid, per_task):
                n = block_tiles(plan.grid, (row0, row1))
                future = self.client.submit(
                    predict_block,
                    self.ref,
                    plan.info,
                    plan.grid,
                    row0,
                    row1,
                    self.options,
                    self.torch_threads,
                    key=f"mscn-geo-{self._run}-{order}-{scene.stem}-rows-{row0}-{row1}",
                    retries=RETRIES,
                    priority=len(planned) - order,  # earlier scenes first: written first
                    pure=False,
                )
                future.add_done_callback(self._counter(n))
                work.futures.append(future)

    def _counter(self, tiles: int) -> Callable[[Any], None]:
        def finished(future: Any) -> None:
            if future.status != "finished":
                return
            with self._lock:
                self.done += tiles
                if self.progress is not None:
                    self.progress(self.done, self.total)

        return finished

    def classify(
        self,
        scene: Path,
        model: LoadedModel,
        options: ClassifyOptions,
        progress: ProgressCallback | None = None,
    ) -> SceneResult:
        """:func:`~mscn_geo.batch.classify_scenes`' ``classify_one``: gather, merge, write."""
        work = self.work[scene]
        if work.error is not None:
            raise work.error

        def gather(
            info: SceneInfo, grid: TileGrid, *_: Any
        ) -> tuple[TileResult, torch.device, torch.dtype | None]:
            blocks = self._gather(scene, work)
            merged = merge_blocks(grid, blocks, model.meta.num_classes)
            first = blocks[0] if blocks else None
            return (
                merged,
                (first.device if first else torch.device("cpu")),
                (first.amp if first else None),
            )

        try:
            result = classify_scene(scene, model, options, plan=work.plan, predictor=gather)
        finally:
            self.client.cancel(work.futures)  # after an error: free the workers
        # Scenes overlap on the cluster: a scene's time is from the job's start.
        result.seconds = time.perf_counter() - self.start
        return result

    def _gather(self, scene: Path, work: _SceneWork) -> list[BlockResult]:
        distributed = _import_distributed()
        try:
            return list(self.client.gather(work.futures))
        except distributed.KilledWorker as exc:
            raise ClusterError(
                f"{scene}: workers died running the same task too many times ({exc}); "
                "nothing was written"
            ) from exc


def classify_scenes_on_cluster(
    scenes: list[Path],
    model: LoadedModel,
    options: ClassifyOptions,
    *,
    scheduler: str | None = None,
    cluster: str | None = None,
    client: Client | None = None,
    keep_going: bool = False,
    skip_existing: bool = False,
    progress_for: Callable[[Path], contextlib.AbstractContextManager[ProgressCallback]]
    | None = None,
    tiles_per_task: int | None = None,
    torch_threads: int | None = None,
) -> Iterator[SceneOutcome]:
    """:func:`mscn_geo.batch.classify_scenes` with the model running on a Dask cluster.

    Same outcomes, outputs, errors and ``keep_going``/``skip_existing`` rules as
    the local run; progress is one ``progress(tiles_done, tiles_total)`` for the
    whole job (``progress_for`` is entered once, with ``Path("<n> scenes")``).

    Args:
        scheduler: address of a running scheduler (``tcp://host:8786``).
        cluster: ``local`` or ``local:N`` (see :func:`local_cluster`).
        client: an already connected client (then neither of the above).
        tiles_per_task: block size (default: :func:`tiles_per_task`).
        torch_threads: model threads per worker (default: the local cluster's
            share of the cores; unchanged on a remote cluster).

    Raises:
        OptionError: ``--resume`` (not supported on a cluster), bad options.
        ClusterError: the scheduler cannot be reached; a task kept killing workers.
    """
    from mscn_geo.batch import classify_scenes, outputs_exist

    options.check()
    if options.resume:
        raise OptionError(
            "resume=True is not supported on a Dask scheduler or cluster",
            field="resume",
        )
    check_scene_list(scenes, Path(options.out_dir))
    ModelRef.of(model)  # fail before starting a cluster
    with contextlib.ExitStack() as stack:
        threads = torch_threads
        if client is None:
            client, local_threads = stack.enter_context(connect(scheduler, cluster))
            threads = threads or local_threads
        job = _Job(
            client,
            model,
            options,
            torch_threads=threads,
            task_tiles=tiles_per_task,
        )
        skip = skip_existing or options.resume
        todo = [s for s in scenes if not (skip and outputs_exist(s, options) is not None)]
        job.plan(todo)
        if progress_for is not None:
            label = Path(f"{len(todo)} scene{'s' if len(todo) != 1 else ''}")
            job.progress = stack.enter_context(progress_for(label))
            job.progress(0, job.total)
        job.submit()
        yield from classify_scenes(
            scenes,
            model,
            options,
            keep_going=keep_going,
            skip_existing=skip_existing,
            classify_one=job.classify,
        )
