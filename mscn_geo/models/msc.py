"""MSC: multiscale sparse cross-attention (MSCN paper, module 3).

Parameter names (``q``, ``kv``, ``proj``, ``layer_norm``, ``attn1``,
``attn2``) follow the published module, so its state dicts load unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mscn_geo.models.sparse_attention import dual_topk_attention


class MSC(nn.Module):
    """Cross-attention from a query map to a multi-scale pooled key/value map.

    Args:
        dim: channels C of both maps (divisible by ``num_heads``).
        num_heads: attention heads.
        k1, k2: each query row keeps the top ``N1 // k1`` and ``N1 // k2``
            scores (clamped to at least 1) in its two sparse maps.
        qkv_bias: bias in the q and kv projections (published: False).
        qk_scale: score scale; default ``head_dim ** -0.5``.
        attn_drop: dropout on the combined attention map (training only).
        proj_drop: dropout after the output projection.
        pool_sizes: odd average-pooling windows summed over the key/value map.

    Shapes:
        ``forward(x, y)``: x (B, C, H, W) query map, y (B, C, H1, W1) key/value
        map, any H, W, H1, W1; returns (B, C, H, W).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        k1: int = 2,
        k2: int = 6,
        qkv_bias: bool = False,
        qk_scale: float | None = None,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        pool_sizes: Sequence[int] = (3, 5, 7),
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        if k1 < 1 or k2 < 1:
            raise ValueError("k1 and k2 must be >= 1")
        if any(p % 2 == 0 for p in pool_sizes):
            raise ValueError("pool sizes must be odd to keep the map size")
        self.num_heads = num_heads
        self.k1 = k1
        self.k2 = k2
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.pool_sizes = tuple(pool_sizes)
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, dim * 2, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj_drop = nn.Dropout(proj_drop)
        self.layer_norm = nn.LayerNorm(dim)
        self.attn1 = nn.Parameter(torch.tensor([0.5]))
        self.attn2 = nn.Parameter(torch.tensor([0.5]))

    def pooled_tokens(self, y: Tensor) -> Tensor:
        """Sum of the stride-1 "same" average pools of y, as (B, H1*W1, C) tokens.

        Pooling a channels-last copy is 3x faster on CPU and bitwise equal to the
        published layout (a depthwise conv with the summed kernels would be 8x
        faster, but its rounding flips near-tied top-k picks against the
        published module's output).
        """
        y = y.contiguous(memory_format=torch.channels_last)
        pooled = None
        for p in self.pool_sizes:  # summed in place: one map alive, not three
            pool = F.avg_pool2d(y, p, stride=1, padding=p // 2, count_include_pad=True)
            pooled = pool if pooled is None else pooled.add_(pool)
        return self.layer_norm(pooled.flatten(2).transpose(1, 2))

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        b, c, h, w = x.shape
        heads = self.num_heads
        tokens = self.pooled_tokens(y)
        n1 = tokens.shape[1]
        # (B, N1, 2C) -> 2 x (B, heads, N1, d)
        k, v = self.kv(tokens).reshape(b, n1, 2, heads, c // heads).permute(2, 0, 3, 1, 4)
        q = self.q(x.flatten(2).transpose(1, 2)).reshape(b, h * w, heads, c // heads)
        q = q.transpose(1, 2)
        k_a, k_b = n1 // self.k1, n1 // self.k2
        if self.training and self.attn_drop.p > 0:
            out = self._attention_with_dropout(q, k, v, k_a, k_b)
        else:
            out = dual_topk_attention(q, k, v, self.attn1, self.attn2, k_a, k_b, self.scale)
        out = self.proj_drop(self.proj(out.transpose(1, 2).reshape(b, h * w, c)))
        return out.transpose(1, 2).reshape(b, c, h, w)

    def _attention_with_dropout(self, q: Tensor, k: Tensor, v: Tensor, k_a: int, k_b: int):
        """Unfused path, used only when attention dropout is on."""
        n1 = k.shape[2]
        k_a, k_b = min(n1, max(1, k_a)), min(n1, max(1, k_b))
        s = (q * self.scale) @ k.transpose(-2, -1)
        top = torch.topk(s.detach(), max(k_a, k_b), dim=-1).values
        p = 0
        for kk, weight in ((k_a, self.attn1), (k_b, self.attn2)):
            thr = top[..., kk - 1 : kk]
            p = p + weight * torch.softmax(s.masked_fill(s < thr, float("-inf")), dim=-1)
        return self.attn_drop(p) @ v
