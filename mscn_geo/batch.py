"""Many-scene runs: expanding scene arguments, running scene after scene, signals.

Scene arguments may be files, glob patterns (expanded here, so a quoted
``"tiles/*.tif"`` works the same as a shell-expanded one), folders (their
``.tif``/``.tiff``/``.vrt`` files, sorted) or ``-`` (one path per line on
stdin). Each scene gives one :class:`SceneOutcome`: ``ok``, ``skipped``
(outputs exist, with ``skip_existing`` or ``resume``) or ``error`` (with
``keep_going``; otherwise the first error stops the run).
"""

from __future__ import annotations

import contextlib
import glob
import signal
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from mscn_geo import classify as _classify
from mscn_geo.errors import InputError, Interrupted, MscnGeoError
from mscn_geo.models.checkpoint import LoadedModel
from mscn_geo.options import ClassifyOptions
from mscn_geo.outputs import SceneResult
from mscn_geo.plan import check_scene_list
from mscn_geo.predict import ProgressCallback
from mscn_geo.remote import as_scene, is_remote

__all__ = [
    "SCENE_SUFFIXES",
    "SceneOutcome",
    "classify_scenes",
    "expand_scenes",
    "outputs_exist",
    "raise_on_signals",
]

#: File types picked from a folder given as a scene argument.
SCENE_SUFFIXES = (".tif", ".tiff", ".vrt")
_GLOB_CHARS = set("*?[")


def expand_scenes(args: Iterable[str | Path], stdin: TextIO | None = None) -> list[Path | str]:
    """Scene paths from the command-line arguments, in order, without duplicates.

    Remote scenes (``http(s)://``, ``s3://``, ``/vsi...``) pass through as strings.

    Raises:
        InputError: a glob or folder that matches nothing, or no scene at all.
    """
    scenes: list[Path | str] = []
    for arg in args:
        text = str(arg)
        if text == "-":
            if stdin is None:
                raise InputError("'-' given but there is no standard input to read paths from")
            scenes.extend(as_scene(line.strip()) for line in stdin if line.strip())
        elif is_remote(text):
            scenes.append(text)
        elif _GLOB_CHARS & set(text) and not Path(text).exists():
            matches = sorted(glob.glob(text, recursive=True))
            if not matches:
                raise InputError(f"no scene matches {text}")
            scenes.extend(Path(m) for m in matches)
        elif Path(text).is_dir():
            found = sorted(p for p in Path(text).iterdir() if p.suffix.lower() in SCENE_SUFFIXES)
            if not found:
                raise InputError(f"folder {text} has no .tif, .tiff or .vrt scene")
            scenes.extend(found)
        else:
            scenes.append(Path(text))
    unique = list(dict.fromkeys(scenes))
    if not unique:
        raise InputError("no scene given")
    return unique


@dataclass
class SceneOutcome:
    """What happened to one scene; ``to_dict()`` is its ``--json`` line."""

    scene: Path
    status: str  # "ok", "skipped" or "error"
    result: SceneResult | None = None
    error: MscnGeoError | None = None
    outputs: dict[str, Path] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        if self.result is not None:
            return {"status": self.status, **self.result.to_dict()}
        out: dict[str, Any] = {"scene": str(Path(self.scene).absolute()), "status": self.status}
        if self.error is not None:
            out["error"] = " ".join(str(self.error).split())
            out["exit_code"] = self.error.exit_code
        if self.outputs:
            out["outputs"] = {k: str(Path(v).absolute()) for k, v in self.outputs.items()}
        return out


def outputs_exist(scene: Path, options: ClassifyOptions) -> dict[str, Path] | None:
    """``{'gpkg': ..., 'raster': ...}`` when both outputs of ``scene`` exist and no
    resume journal says their run was interrupted; else ``None``."""
    from mscn_geo.io import output_paths
    from mscn_geo.resume import journal_dir

    paths = output_paths(scene, Path(options.out_dir))
    finals = {k: v for k, v in paths.items() if k in ("gpkg", "raster")}
    interrupted = journal_dir(scene, options.out_dir).exists()
    if all(p.exists() for p in finals.values()) and not interrupted:
        return finals
    return None


def classify_scenes(
    scenes: list[Path],
    model: LoadedModel,
    options: ClassifyOptions,
    *,
    keep_going: bool = False,
    skip_existing: bool = False,
    progress_for: Callable[[Path], contextlib.AbstractContextManager[ProgressCallback]]
    | None = None,
    classify_one: Callable[..., SceneResult] | None = None,
) -> Iterator[SceneOutcome]:
    """Classify ``scenes`` one after the other, yielding one outcome per scene.

    A scene whose two outputs exist is skipped with ``skip_existing``, and with
    ``options.resume`` unless its resume journal is still there (it was
    interrupted). Without ``keep_going`` the first error is raised after its
    outcome is yielded; :class:`~mscn_geo.errors.Interrupted` always stops.
    ``classify_one`` replaces :func:`~mscn_geo.classify.classify_scene` (same
    signature; :mod:`mscn_geo.distributed` gathers a scene's results from a cluster).
    """
    classify = classify_one or _classify.classify_scene
    options.check()
    check_scene_list(scenes, Path(options.out_dir))
    for scene in scenes:
        if skip_existing or options.resume:
            existing = outputs_exist(scene, options)
            if existing is not None:
                yield SceneOutcome(scene, "skipped", outputs=existing)
                continue
        try:
            if progress_for is None:
                result = classify(scene, model, options)
            else:
                with progress_for(scene) as progress:
                    result = classify(scene, model, options, progress=progress)
        except Interrupted:
            raise
        except MscnGeoError as exc:
            yield SceneOutcome(scene, "error", error=exc)
            if not keep_going:
                raise
            continue
        yield SceneOutcome(scene, "ok", result=result)


@contextlib.contextmanager
def raise_on_signals(signums: Iterable[int] = (signal.SIGINT, signal.SIGTERM)) -> Iterator[None]:
    """Turn SIGINT/SIGTERM into :class:`~mscn_geo.errors.Interrupted` in the main thread.

    The exception unwinds through the writers, which remove their temporaries;
    further signals during that cleanup are ignored so it can finish. Outside the
    main thread (where handlers cannot be set) this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    fired: list[int] = []

    def handler(signum: int, _frame: object) -> None:
        if fired:
            return
        fired.append(signum)
        raise Interrupted(signum)

    previous = {s: signal.signal(s, handler) for s in signums}
    try:
        yield
    finally:
        for s, old in previous.items():
            signal.signal(s, old)
