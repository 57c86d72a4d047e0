"""Run a classifier graph with its top-k selections done by numpy instead of ONNX Runtime.

ONNX Runtime's CPU ``TopK`` (unsorted, k = N1/2 of 1,024 scores) was 26 % of the
bundled model's graph time (profiled: batch 16, 2 threads); numpy's
``partition`` (a vectorised quickselect) finds the same k-th largest value of
each row about 4x faster on one thread.

The graph :func:`mscn_geo.onnx_export.export_onnx` writes uses each ``TopK``
only through reductions of its values: their minimum (the k-th largest score,
the threshold of a sparse attention map), their maximum (the row's maximum) and
a second ``TopK`` inside them (the smaller set, reduced the same way). Those are
exact order statistics of the score rows, so a partition gives the very same
values. :func:`split_at_selections` cuts the graph there: a *first* part
(input -> the score tensors and every other tensor the rest needs) and a
*second* part (those and the order statistics -> the outputs);
:class:`SelectionSplitSession` runs the first part, the partitions (rows spread
over threads: numpy releases the GIL) and the second part. A graph without
that pattern is not split (:func:`split_at_selections` returns ``None``).
:func:`cached_split` keeps the parts beside the graph file, so a later run
loads them without importing ``onnx``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections import defaultdict
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "RowSelection",
    "SelectionSplitSession",
    "SplitGraph",
    "cached_split",
    "split_at_selections",
]

#: Bumped when the split changes for the same graph, so older parts are not reused.
SPLIT_REVISION = 1


@dataclass(frozen=True)
class RowSelection:
    """Order statistics of one score tensor's rows (last axis), by tensor name.

    Attributes:
        scores: the (..., N1) score tensor, an output of the first part.
        kth: (statistic, k) pairs: the statistic (..., 1) is the k-th largest
            score of each row; k is a number where the graph holds it as a
            constant, else the name of an int64 tensor the first part returns.
        maxima: statistics (..., 1) that are each row's largest score.
    """

    scores: str
    kth: tuple[tuple[str, int | str], ...]
    maxima: tuple[str, ...]

    @property
    def statistics(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.kth) + self.maxima


@dataclass(frozen=True)
class SplitGraph:
    """The two parts of a split graph (serialised ONNX models) and what joins them."""

    first: bytes
    second: bytes
    input_name: str
    carried: tuple[str, ...]  # first-part outputs the second part takes as they are
    selections: tuple[RowSelection, ...]

    @property
    def first_outputs(self) -> list[str]:
        return _first_outputs(self.carried, self.selections)

    def save(self, folder: Path) -> None:
        """``first.onnx``, ``second.onnx`` and ``split.json`` in ``folder`` (created)."""
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "first.onnx").write_bytes(self.first)
        (folder / "second.onnx").write_bytes(self.second)
        joins = {
            "revision": SPLIT_REVISION,
            "input_name": self.input_name,
            "carried": list(self.carried),
            "selections": [asdict(sel) for sel in self.selections],
        }
        (folder / "split.json").write_text(json.dumps(joins))

    @classmethod
    def load(cls, folder: Path) -> SplitGraph | None:
        """What :meth:`save` wrote; None for a graph recorded as not split."""
        joins = json.loads((folder / "split.json").read_text())
        if not joins["selections"]:
            return None
        selections = tuple(
            RowSelection(s["scores"], tuple(map(tuple, s["kth"])), tuple(s["maxima"]))
            for s in joins["selections"]
        )
        return cls(
            (folder / "first.onnx").read_bytes(),
            (folder / "second.onnx").read_bytes(),
            joins["input_name"],
            tuple(joins["carried"]),
            selections,
        )


def _first_outputs(carried: Sequence[str], selections: Sequence[RowSelection]) -> list[str]:
    """What the first part returns: the carried tensors, the scores and the k tensors."""
    ks = [k for sel in selections for _, k in sel.kth if isinstance(k, str)]
    return list(dict.fromkeys([*carried, *(sel.scores for sel in selections), *ks]))


def _constant_ints(graph: Any, name: str) -> list[int] | None:
    """The integer values of an initializer or ``Constant`` output, else None."""
    from onnx import numpy_helper

    for init in graph.initializer:
        if init.name == name:
            return [int(v) for v in numpy_helper.to_array(init).ravel()]
    for node in graph.node:
        if node.op_type == "Constant" and name in node.output:
            for attr in node.attribute:
                if attr.name == "value":
                    return [int(v) for v in numpy_helper.to_array(attr.t).ravel()]
    return None


def _attr(node: Any, name: str, default: int) -> int:
    return next((int(a.i) for a in node.attribute if a.name == name), default)


def _is_last_axis(axes: Sequence[int] | None, rank: int) -> bool:
    return axes is not None and len(axes) == 1 and axes[0] in (-1, rank - 1)


def _reduction_axes(graph: Any, node: Any) -> list[int] | None:
    """Axes of a ReduceMin/ReduceMax: its ``axes`` input (opset 18) or attribute."""
    if len(node.input) > 1 and node.input[1]:
        return _constant_ints(graph, node.input[1])
    for attr in node.attribute:
        if attr.name == "axes":
            return list(attr.ints)
    return None


def _find_selections(graph: Any, ranks: dict[str, int]) -> list[RowSelection] | None:
    """Every TopK as a :class:`RowSelection`, or None if one is used any other way."""
    consumers: dict[str, list[Any]] = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            consumers[name].append(node)
    graph_outputs = {o.name for o in graph.output}
    producer = {out: node for node in graph.node for out in node.output}
    selections = []
    for root in (n for n in graph.node if n.op_type == "TopK"):
        if producer.get(root.input[0]) is not None and producer[root.input[0]].op_type == "TopK":
            continue  # a nested selection: handled with its root
        rank = ranks.get(root.input[0])
        kth: list[tuple[str, int | str]] = []
        maxima: list[str] = []
        pending = [root]
        while pending:
            topk = pending.pop()
            if rank is None or _attr(topk, "largest", 1) != 1:
                return None
            if not _is_last_axis([_attr(topk, "axis", -1)], rank):
                return None
            values, indices = topk.output[0], topk.output[1] if len(topk.output) > 1 else ""
            if indices and (consumers.get(indices) or indices in graph_outputs):
                return None
            if values in graph_outputs:
                return None
            for use in consumers.get(values, []):
                if use.op_type == "TopK" and use.input[0] == values:
                    pending.append(use)
                elif use.op_type in ("ReduceMin", "ReduceMax"):
                    if _attr(use, "keepdims", 1) != 1:
                        return None
                    if not _is_last_axis(_reduction_axes(graph, use), rank):
                        return None
                    if use.op_type == "ReduceMin":
                        k = _constant_ints(graph, topk.input[1])
                        kth.append((use.output[0], k[0] if k else topk.input[1]))
                    else:
                        maxima.append(use.output[0])
                else:
                    return None
        selections.append(RowSelection(root.input[0], tuple(kth), tuple(maxima)))
    return selections


def split_at_selections(model: Any) -> SplitGraph | None:
    """Cut an ONNX model (one input) at its top-k selections; None where it cannot be.

    Returns None when the graph has no ``TopK``, uses one other than through the
    reductions described in the module docstring, or a score tensor depends on
    another selection's statistics (one cut would not do).
    """
    import onnx
    from onnx.utils import Extractor

    inferred = onnx.shape_inference.infer_shapes(model)
    graph = inferred.graph
    initializers = {init.name for init in graph.initializer}
    inputs = [i.name for i in graph.input if i.name not in initializers]
    if len(inputs) != 1:
        return None
    ranks = {
        v.name: len(v.type.tensor_type.shape.dim)
        for v in [*graph.value_info, *graph.input, *graph.output]
        if v.type.tensor_type.HasField("shape")
    }
    selections = _find_selections(graph, ranks)
    if not selections:
        return None
    statistics = {name for sel in selections for name in sel.statistics}

    # The second part: every node that depends on a statistic (forward closure).
    tainted = set(statistics)
    second_nodes = []
    for node in graph.node:  # ONNX nodes are in topological order
        if tainted.intersection(node.input):
            second_nodes.append(node)
            tainted.update(node.output)
    if any(sel.scores in tainted for sel in selections):
        return None
    produced = {out for node in second_nodes for out in node.output}
    constants = {out for node in graph.node if node.op_type == "Constant" for out in node.output}
    carried = tuple(
        dict.fromkeys(
            name
            for node in second_nodes
            for name in node.input
            if name
            and name not in produced
            and name not in statistics
            and name not in constants
            and name not in initializers
        )
    )
    input_name = inputs[0]
    extractor = Extractor(inferred)
    outputs = [o.name for o in graph.output]
    second = extractor.extract_model([*carried, *sorted(statistics)], outputs)
    # Nothing before the cut may have been pulled into the second part.
    if not {out for node in second.graph.node for out in node.output} <= produced | constants:
        return None
    first = extractor.extract_model([input_name], _first_outputs(carried, selections))
    return SplitGraph(
        first.SerializeToString(),
        second.SerializeToString(),
        input_name,
        carried,
        tuple(selections),
    )


def cached_split(graph: Path) -> SplitGraph | None:
    """:func:`split_at_selections` of the model file ``graph``, kept beside it.

    The parts are written to ``<graph>.split-<revision>/`` (into a temporary
    folder renamed into place, so a half-written cache is never read); a graph
    that cannot be split is recorded there too. Without a writable folder the
    split is made each time; a folder damaged by hand is made anew.
    """
    folder = graph.with_name(f"{graph.stem}.split-{SPLIT_REVISION}")
    if folder.exists():
        try:
            return SplitGraph.load(folder)
        except (OSError, ValueError, KeyError, TypeError):
            shutil.rmtree(folder, ignore_errors=True)
    import onnx

    split = split_at_selections(onnx.load(str(graph)))
    record = split or SplitGraph(b"", b"", "", (), ())
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=graph.parent))
    except OSError:  # a read-only cache
        return split
    try:
        record.save(tmp)
        os.replace(tmp, folder)
    except OSError:  # another process renamed its copy into place first
        shutil.rmtree(tmp, ignore_errors=True)
    return split


def _order_statistics(rows: np.ndarray, ks: Sequence[int]) -> tuple[list[np.ndarray], np.ndarray]:
    """The k-th largest value of each row for each k (any order), and each row's maximum.

    Largest k first; each smaller set is selected inside the previous one (it is
    part of it), so later partitions are over fewer values.
    """
    order = sorted(range(len(ks)), key=lambda i: -ks[i])
    found: list[np.ndarray] = [np.empty(0, rows.dtype)] * len(ks)
    top = rows
    for i in order:
        n = top.shape[-1]
        top = np.partition(top, n - ks[i], axis=-1)[:, n - ks[i] :]
        found[i] = top[:, 0]
    return found, top.max(axis=-1)


class SelectionSplitSession:
    """The two parts of a :class:`SplitGraph` run as one session.

    ``run(None, {input: x})`` returns the second part's outputs, like
    ``onnxruntime.InferenceSession.run``.
    """

    def __init__(self, split: SplitGraph, options: Any, providers: Iterable[str], threads: int):
        import onnxruntime as ort

        self.split = split
        providers = list(providers)
        self._first = ort.InferenceSession(split.first, options, providers=providers)
        self._second = ort.InferenceSession(split.second, options, providers=providers)
        self._first_outputs = split.first_outputs
        self._threads = max(1, threads)
        self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix="mscn-geo-select")

    def get_inputs(self) -> list[Any]:
        return self._first.get_inputs()

    def run(self, output_names: list[str] | None, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        first = self._first.run(self._first_outputs, feeds)
        values = dict(zip(self._first_outputs, first, strict=True))
        second_feeds = {name: values[name] for name in self.split.carried}
        for sel in self.split.selections:
            second_feeds.update(self._statistics(sel, values))
        return self._second.run(output_names, second_feeds)

    def _statistics(
        self, sel: RowSelection, values: dict[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        scores = values[sel.scores]
        shape = (*scores.shape[:-1], 1)
        rows = scores.reshape(-1, scores.shape[-1])
        ks = [k if isinstance(k, int) else int(values[k].ravel()[0]) for _, k in sel.kth]
        kth = [np.empty(len(rows), scores.dtype) for _ in ks]
        maxima = np.empty(len(rows), scores.dtype)

        def work(part: slice) -> None:
            found, top = _order_statistics(rows[part], ks)
            for dst, src in zip(kth, found, strict=True):
                dst[part] = src
            maxima[part] = top

        step = max(1, -(-len(rows) // self._threads))
        parts = [slice(i, i + step) for i in range(0, len(rows), step)]
        list(self._pool.map(work, parts))  # re-raises a worker's error
        out = {name: v.reshape(shape) for (name, _), v in zip(sel.kth, kth, strict=True)}
        out.update({name: maxima.reshape(shape) for name in sel.maxima})
        return out
