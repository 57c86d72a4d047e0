"""Dual top-k sparse attention, fused, chunked and memory-lean.

The MSC module of the paper builds, per query row, two sparse attention maps:
softmax over the ``k_a`` largest scores (P1) and over the ``k_b`` largest (P2),
and returns ``a1 * P1 @ v + a2 * P2 @ v``. The published code does this with
two ``topk`` calls, two dense float masks filled by ``scatter``, ``-inf``
fills, two softmaxes and two matmuls with ``v``.

Here the maths is the same, but:

* one ``topk`` per row gives both thresholds (the smaller top-k set is a prefix
  of the larger one) and the row maximum;
* the two maps share one ``exp(s - max)``: P1 and P2 differ only in which
  entries they keep and in their normalisers, so ``P = e * (a1 [s >= t_a] / z_a
  + a2 [s >= t_b] / z_b)`` and a single ``P @ v`` follows;
* no ``-inf`` ever appears (masking is a multiply by 0), so fp16/bf16 never
  meet ``inf - inf`` and small maps never give NaN;
* query rows are processed in chunks and the backward pass recomputes the
  scores from ``q`` and ``k`` (as flash attention does), so neither pass holds
  more than one chunk of the ``(B, heads, N, N1)`` score tensor.

Ties at a threshold are all kept (a row of equal scores keeps every entry),
where ``torch.topk`` would break them arbitrarily.
"""

from __future__ import annotations

import torch
from torch import Tensor

# Score-chunk budget in elements (float32): 16 M elements = 64 MB.
_CHUNK_ELEMENTS = 1 << 24


def _rows_per_chunk(batch_heads: int, n_keys: int, n_queries: int) -> int:
    return max(1, min(n_queries, _CHUNK_ELEMENTS // max(1, batch_heads * n_keys)))


def _scores(q: Tensor, k: Tensor) -> Tensor:
    """Scores in float32; ``q`` is already scaled so fp16 products stay small."""
    return torch.matmul(q, k.transpose(-2, -1)).float()


def _row_stats(s: Tensor, k_a: int, k_b: int) -> tuple[Tensor, Tensor, Tensor]:
    """Row maximum and the k_a-th / k_b-th largest score of each row of ``s``."""
    top = torch.topk(s, max(k_a, k_b), dim=-1, sorted=True).values
    return top[..., :1], top[..., k_a - 1 : k_a], top[..., k_b - 1 : k_b]


def _sparse_maps(
    s: Tensor, m: Tensor, t_a: Tensor, t_b: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """exp(s - m), the two keep-masks and their normalisers."""
    e = torch.exp(s - m)
    keep_a = s >= t_a
    keep_b = s >= t_b
    z_a = (e * keep_a).sum(-1, keepdim=True)
    z_b = (e * keep_b).sum(-1, keepdim=True)
    return e, keep_a, keep_b, z_a, z_b


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
        n1 = k.shape[1]
        step = _rows_per_chunk(bh, n1, n)
        out = torch.empty_like(q, dtype=v.dtype)
        stats = torch.empty(5, bh, n, 1, device=q.device, dtype=torch.float32)
        a1f, a2f = a1.float(), a2.float()
        for lo in range(0, n, step):
            hi = min(n, lo + step)
            s = _scores(q[:, lo:hi], k)
            m, t_a, t_b = _row_stats(s, k_a, k_b)
            e, keep_a, keep_b, z_a, z_b = _sparse_maps(s, m, t_a, t_b)
            del s
            p = e.mul_(keep_a * (a1f / z_a) + keep_b * (a2f / z_b))
            out[:, lo:hi] = torch.matmul(p.to(v.dtype), v)
            stats[:, :, lo:hi] = torch.stack((m, t_a, t_b, z_a, z_b))
        ctx.save_for_backward(q, k, v, a1, a2, stats)
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        q, k, v, a1, a2, stats = ctx.saved_tensors
        bh, n, _ = q.shape
        n1 = k.shape[1]
        step = _rows_per_chunk(bh, n1, n)
        grad_q = torch.empty_like(q)
        grad_k = torch.zeros(k.shape, device=k.device, dtype=torch.float32)
        grad_v = torch.zeros(v.shape, device=v.device, dtype=torch.float32)
        grad_a1 = torch.zeros((), device=q.device, dtype=torch.float32)
        grad_a2 = torch.zeros((), device=q.device, dtype=torch.float32)
        a1f, a2f = a1.float(), a2.float()
        for lo in range(0, n, step):
            hi = min(n, lo + step)
            m, t_a, t_b, z_a, z_b = stats[:, :, lo:hi]
            s = _scores(q[:, lo:hi], k)
            e, keep_a, keep_b, _, _ = _sparse_maps(s, m, t_a, t_b)
            del s
            p_a = e * keep_a / z_a
            p_b = e.mul_(keep_b).div_(z_b)
            g = grad_out[:, lo:hi]
            p = a1f * p_a + a2f * p_b
            grad_v += torch.matmul(p.transpose(-2, -1).to(g.dtype), g).float()
            del p
            dp = torch.matmul(g, v.transpose(-2, -1).to(g.dtype)).float()
            dot_a = (dp * p_a).sum(-1, keepdim=True)
            dot_b = (dp * p_b).sum(-1, keepdim=True)
            grad_a1 += dot_a.sum()
            grad_a2 += dot_b.sum()
            ds = (p_a.mul_(dp - dot_a).mul_(a1f)).add_(p_b.mul_(dp.sub_(dot_b)).mul_(a2f))
            ds = ds.to(q.dtype)
            grad_q[:, lo:hi] = torch.matmul(ds, k)
            grad_k += torch.matmul(ds.transpose(-2, -1), q[:, lo:hi]).float()
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
    dtype = v.dtype
    with torch.autocast(device_type=q.device.type, enabled=False):
        qf = (q.to(dtype) * scale).reshape(b * h, n, d)
        kf = k.to(dtype).reshape(b * h, n1, d)
        vf = v.reshape(b * h, n1, d)
        out = _DualTopKAttention.apply(qf, kf, vf, a1, a2, k_a, k_b)
    return out.reshape(b, h, n, d)
