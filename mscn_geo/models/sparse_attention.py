"""Dual top-k sparse attention, fused, chunked and memory-lean.

The MSC module of the paper builds, per query row, two sparse attention maps:
softmax over the ``k_a`` largest scores (P1) and over the ``k_b`` largest (P2),
and returns ``a1 * P1 @ v + a2 * P2 @ v``. The published code does this with
two ``topk`` calls, two dense float masks filled by ``scatter``, ``-inf``
fills, two softmaxes and two matmuls with ``v``.

Here the maths is the same, but:

* one selection per row (numpy's ``partition`` on CPU, an unsorted ``topk``
  elsewhere) gives the larger set's threshold and the row maximum, and a second
  one inside those values only the smaller set's (the smaller top-k set is part
  of the larger one);
* the two maps share one ``exp(s - max)``: P1 and P2 differ only in which
  entries they keep and in their normalisers, so ``P = e * (a1 [s >= t_a] / z_a
  + a2 [s >= t_b] / z_b)`` and a single ``P @ v`` follows;
* no ``-inf`` ever appears (masking is a multiply by a chunk's 0/1 masks), so
  fp16/bf16 never meet ``inf - inf`` and small maps never give NaN;
* query rows are processed in chunks and the backward pass recomputes the
  scores from ``q`` and ``k`` (as flash attention does), so neither pass holds
  more than one chunk of the ``(B, heads, N, N1)`` score tensor.

Ties at a threshold are all kept (a row of equal scores keeps every entry),
where ``torch.topk`` would break them arbitrarily.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torch import Tensor

# Score-chunk budgets in elements (float32). CPU: 1 M elements = 4 MB per temporary,
# so a chunk's few temporaries stay in a 32 MB L3 (faster than 2 M on the 2-core VM).
# CUDA: 64 M elements = 256 MB per temporary (about 2 GB for the backward's
# temporaries): with the CPU's budget a batch became hundreds of small kernels
# and the fused path ran 4-5x slower than the dense reference on an H200
# (benchmarks/results/msc_cuda.json).
_CHUNK_ELEMENTS = 1 << 20
_CUDA_CHUNK_ELEMENTS = 1 << 26


def _chunks(
    batch_heads: int, n_queries: int, n_keys: int, device: torch.device
) -> list[tuple[slice, slice]]:
    """(batch-head, query-row) slices covering the score tensor in budget-sized chunks.

    Whole (batch, head) maps are grouped first, so each chunk reads only its
    own keys and values; rows are split only when one map exceeds the budget.
    """
    budget = _CUDA_CHUNK_ELEMENTS if device.type == "cuda" else _CHUNK_ELEMENTS
    rows = max(1, min(n_queries, budget // max(1, n_keys)))
    maps = max(1, budget // (rows * n_keys))
    return [
        (slice(b, min(batch_heads, b + maps)), slice(r, min(n_queries, r + rows)))
        for b in range(0, batch_heads, maps)
        for r in range(0, n_queries, rows)
    ]


def _scores(q: Tensor, k: Tensor) -> Tensor:
    """Scores in float32; ``q`` is already scaled so fp16 products stay small."""
    return torch.matmul(q, k.transpose(-2, -1)).float()


def _select_topk(x: Tensor, k: int) -> Tensor:
    """Unsorted values of the ``k`` largest of each row: plain ``topk`` (CUDA, export)."""
    return torch.topk(x, k, dim=-1, sorted=False).values


def _select_cpu(x: Tensor, k: int) -> Tensor:
    """The same values, selected by numpy's ``partition`` (a float32 CPU tensor).

    numpy's quickselect (vectorised) is 3-5x faster than ``torch.topk`` here (a
    1,024-score row, k = 512: 10.6 ms for 8,192 rows on one thread against 52 ms on
    two); only the order inside the set differs. The rows are shared out to
    ``torch.get_num_threads()`` threads (numpy releases the GIL): 1.5x on 2 cores.
    """
    n = x.shape[-1]
    rows = x.detach().reshape(-1, n).numpy()
    out = np.empty((rows.shape[0], k), rows.dtype)

    def select(part: slice) -> None:
        out[part] = np.partition(rows[part], n - k, axis=-1)[:, n - k :]

    threads = min(torch.get_num_threads(), max(1, rows.size // _MIN_ELEMENTS_PER_THREAD))
    step = -(-rows.shape[0] // threads)
    parts = [slice(i, i + step) for i in range(0, rows.shape[0], step)]
    if len(parts) == 1:
        select(parts[0])
    else:
        list(_selection_pool(threads).map(select, parts))  # re-raises a worker's error
    return torch.from_numpy(out).view(*x.shape[:-1], k)


# Below this many scores per thread, handing rows to another thread costs more
# than it saves (about 50 us a hand-off).
_MIN_ELEMENTS_PER_THREAD = 1 << 16
_POOLS: dict[int, ThreadPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()


def _selection_pool(threads: int) -> ThreadPoolExecutor:
    """One pool per thread count, made on first use and kept for the process."""
    with _POOLS_LOCK:
        if threads not in _POOLS:
            _POOLS[threads] = ThreadPoolExecutor(threads, thread_name_prefix="mscn-geo-select")
        return _POOLS[threads]


def _top_sets(
    s: Tensor, k_a: int, k_b: int, select: Callable[[Tensor, int], Tensor] = _select_topk
) -> tuple[Tensor, Tensor]:
    """Unsorted values of the ``k_a`` and of the ``k_b`` largest scores of each row.

    One selection of the larger k over the row; the smaller set is selected among
    those values only (it is part of the larger one). Unsorted selections are
    faster than sorted ones or ``kthvalue`` (ONNX Runtime's sorted TopK was 30 % of
    the exported graph's time); ``topk`` is a plain operator, so the exported
    graph and the fused path off the CPU share it.
    """
    k_big, k_small = max(k_a, k_b), min(k_a, k_b)
    big = select(s, k_big)
    small = big if k_small == k_big else select(big, k_small)
    return (big, small) if k_a >= k_b else (small, big)


def _row_stats(s: Tensor, k_a: int, k_b: int) -> Tensor:
    """(5, ..., 1): row max, the k_a-th and k_b-th largest scores, and the two normalisers.

    The thresholds are the minima of :func:`_top_sets`, the row max their
    maximum. The normalisers ``z = sum(exp(s - max))`` over each kept set come
    from the top values alone; :func:`_fix_ties` corrects them where a tie at a
    threshold keeps more than k entries (fp16 scores, repeated keys).
    """
    cpu = s.device.type == "cpu" and s.dtype == torch.float32
    top_a, top_b = _top_sets(s, k_a, k_b, _select_cpu if cpu else _select_topk)
    m = top_a.amax(-1, keepdim=True)
    z_a = torch.exp(top_a - m).sum(-1, keepdim=True)
    z_b = z_a if top_b is top_a else torch.exp(top_b - m).sum(-1, keepdim=True)
    return torch.stack((m, top_a.amin(-1, keepdim=True), top_b.amin(-1, keepdim=True), z_a, z_b))


# The keep-masks are 0/1 floats and masking is a multiply: on CPU torch.where
# with a broadcast scalar runs about 7x slower than the multiply (and a masked
# row sum 20x slower than a dot product with the mask). Every value masked is
# finite (exponentials <= 1 and their gradients), so the products are exact.


def _fix_ties(stats: Tensor, e: Tensor, keep_a: Tensor, keep_b: Tensor, k_a: int, k_b: int) -> None:
    """Recompute, in ``stats``, the normalisers of rows whose kept sets hold tied extras."""
    ties = (keep_a.sum(-1, keepdim=True) != k_a) | (keep_b.sum(-1, keepdim=True) != k_b)
    # On CUDA asking whether any row ties would wait for the GPU at every chunk (the
    # host could not queue the next batch meanwhile): there the sums are always taken.
    if e.is_cuda or bool(ties.any()):
        stats[3] = torch.where(ties, _masked_sum(e, keep_a), stats[3])
        stats[4] = torch.where(ties, _masked_sum(e, keep_b), stats[4])


def _masked_sum(x: Tensor, keep: Tensor) -> Tensor:
    """Row sums of ``x`` over the kept entries, (..., 1)."""
    return torch.linalg.vecdot(x, keep).unsqueeze(-1)


def _exp_and_masks(s: Tensor, stats: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """exp(s - max) in place of ``s``, and the two keep-masks as 0/1 in ``s``'s dtype."""
    m, t_a, t_b = stats[0], stats[1], stats[2]
    keep_a, keep_b = _keep(s, t_a), _keep(s, t_b)
    return s.sub_(m).exp_(), keep_a, keep_b


def _keep(s: Tensor, threshold: Tensor) -> Tensor:
    """``s >= threshold`` as 0/1 in ``s``'s dtype.

    Compared straight into a float tensor: one pass instead of a bool tensor and a
    conversion (7.7x faster on CPU for a 1 M-element chunk, 0.34 -> 0.044 ms). Under
    ``torch.compile`` the plain form, which its graphs handle as one fused kernel.
    """
    if torch.compiler.is_compiling():
        return (s >= threshold).to(s.dtype)
    return torch.ge(s, threshold, out=torch.empty_like(s))


def _combine(keep_a: Tensor, keep_b: Tensor, on_a: Tensor, on_b: Tensor) -> Tensor:
    """Per entry: ``on_a`` where the first set keeps it plus ``on_b`` where the second does."""
    return torch.addcmul(keep_a * on_a, keep_b, on_b)


class _DualTopKAttention(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        a1: Tensor,
        a2: Tensor,
        k_a: int,
        k_b: int,
    ) -> Tensor:
        # q, k, v: (BH, N, d), (BH, N1, d), (BH, N1, d); q already scaled.
        bh, n, _ = q.shape
        out = torch.empty_like(q, dtype=v.dtype)
        stats = torch.empty(5, bh, n, 1, device=q.device, dtype=torch.float32)
        a1f, a2f = a1.float(), a2.float()
        for maps, rows in _chunks(bh, n, k.shape[1], q.device):
            s = _scores(q[maps, rows], k[maps])
            chunk_stats = _row_stats(s, k_a, k_b)
            e, keep_a, keep_b = _exp_and_masks(s, chunk_stats)
            _fix_ties(chunk_stats, e, keep_a, keep_b, k_a, k_b)
            # P = e * w, w = a1/z_a on the first kept set plus a2/z_b on the second.
            c_a, c_b = a1f / chunk_stats[3], a2f / chunk_stats[4]
            p = e.mul_(_combine(keep_a, keep_b, c_a, c_b))
            out[maps, rows] = torch.matmul(p.to(v.dtype), v[maps])
            stats[:, maps, rows] = chunk_stats
        ctx.save_for_backward(q, k, v, a1, a2, stats)
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        q, k, v, a1, a2, stats = ctx.saved_tensors
        bh, n, _ = q.shape
        chunks = _chunks(bh, n, k.shape[1], q.device)
        # When every chunk holds whole maps, each map's key and value gradients
        # come from one chunk: written once, not zero-filled and accumulated.
        whole = chunks[0][1].stop - chunks[0][1].start == n
        new = torch.empty if whole else torch.zeros
        grad_q = torch.empty_like(q)
        grad_k = new(k.shape, device=k.device, dtype=torch.float32)
        grad_v = new(v.shape, device=v.device, dtype=torch.float32)
        grad_a1 = torch.zeros((), device=q.device, dtype=torch.float32)
        grad_a2 = torch.zeros((), device=q.device, dtype=torch.float32)
        a1f, a2f = a1.float(), a2.float()
        for maps, rows in chunks:
            g, qc, kc, vc = grad_out[maps, rows], q[maps, rows], k[maps], v[maps]
            chunk_stats = stats[:, maps, rows]
            s = _scores(qc, kc)
            e, keep_a, keep_b = _exp_and_masks(s, chunk_stats)
            c_a, c_b = a1f / chunk_stats[3], a2f / chunk_stats[4]
            p = e * _combine(keep_a, keep_b, c_a, c_b)
            part_v = torch.matmul(p.transpose(-2, -1).to(g.dtype), g).float()
            dp = torch.matmul(g, vc.transpose(-2, -1).to(g.dtype)).float()
            # d softmax over a kept set: P_x * (dP - <dP, P_x>), with P_x = e * keep_x / z_x.
            z_a, z_b = chunk_stats[3], chunk_stats[4]
            e_dp = e * dp
            dot_a = _masked_sum(e_dp, keep_a) / z_a
            dot_b = _masked_sum(e_dp, keep_b) / z_b
            del e_dp
            grad_a1 += dot_a.sum()
            grad_a2 += dot_b.sum()
            # ds = P * dP - e * (keep_a c_a dot_a + keep_b c_b dot_b)
            shift = _combine(keep_a, keep_b, c_a * dot_a, c_b * dot_b)
            ds = p.mul_(dp).sub_(e.mul_(shift)).to(q.dtype)
            grad_q[maps, rows] = torch.matmul(ds, kc)
            part_k = torch.matmul(ds.transpose(-2, -1), qc).float()
            if whole:
                grad_v[maps], grad_k[maps] = part_v, part_k
            else:
                grad_v[maps] += part_v
                grad_k[maps] += part_k
        return (
            grad_q,
            grad_k.to(k.dtype),
            grad_v.to(v.dtype),
            grad_a1.reshape(a1.shape).to(a1.dtype),
            grad_a2.reshape(a2.shape).to(a2.dtype),
            None,
            None,
        )


def dual_topk_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    a1: Tensor,
    a2: Tensor,
    k_a: int,
    k_b: int,
    scale: float,
) -> Tensor:
    """``a1 * softmax_topk(q k^T * scale, k_a) @ v + a2 * softmax_topk(..., k_b) @ v``.

    Args:
        q: queries, (B, heads, N, d).
        k: keys, (B, heads, N1, d).
        v: values, (B, heads, N1, d).
        a1, a2: mixing weights, tensors of shape (1,) (learnable).
        k_a, k_b: how many scores each row keeps in the two maps (clamped to
            1..N1).
        scale: score scale, usually ``d ** -0.5``.

    Returns:
        (B, heads, N, d), in ``v``'s dtype. Runs with autocast off inside and
        keeps softmax statistics in float32, so fp16/bf16 inputs are safe.
    """
    b, h, n, d = q.shape
    n1 = k.shape[2]
    k_a = min(max(1, k_a), n1)
    k_b = min(max(1, k_b), n1)
    if torch.onnx.is_in_onnx_export() or torch.compiler.is_exporting():
        # The fused path's autograd.Function and its Python loop over batch-head
        # chunks cannot become a graph with a dynamic batch axis.
        return dense_dual_topk_attention(q, k, v, a1, a2, k_a, k_b, scale)
    dtype = v.dtype
    with torch.autocast(device_type=q.device.type, enabled=False):
        qf = (q.to(dtype) * scale).reshape(b * h, n, d)
        kf = k.to(dtype).reshape(b * h, n1, d)
        vf = v.reshape(b * h, n1, d)
        out = _DualTopKAttention.apply(qf, kf, vf, a1, a2, k_a, k_b)
    return out.reshape(b, h, n, d)


def dense_dual_topk_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    a1: Tensor,
    a2: Tensor,
    k_a: int,
    k_b: int,
    scale: float,
) -> Tensor:
    """:func:`dual_topk_attention` as plain tensor operations, for graph export (ONNX).

    Same maths and tie rule as the fused path (every score at a threshold is
    kept, the normalisers sum over the kept sets), but the whole (B, heads, N,
    N1) score tensor is held at once and there is no custom backward: only
    what ``torch.export`` and the ONNX exporters can trace, with any batch size.
    ``k_a`` and ``k_b`` must already be in 1..N1.
    """
    s = torch.matmul(q * scale, k.transpose(-2, -1))
    top_a, top_b = _top_sets(s, k_a, k_b)
    t_a, t_b = top_a.amin(-1, keepdim=True), top_b.amin(-1, keepdim=True)
    e = torch.exp(s - top_a.amax(-1, keepdim=True))
    e_a = e * (s >= t_a).to(e.dtype)
    e_b = e * (s >= t_b).to(e.dtype)
    p = e_a * (a1 / e_a.sum(-1, keepdim=True)) + e_b * (a2 / e_b.sum(-1, keepdim=True))
    return torch.matmul(p, v)
