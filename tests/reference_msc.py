"""A plainly written dense MSC, step by step as in ../shared/reference/MSCN.md.

Independent of the library's fused path: two topk calls, two dense masks,
-inf fills, two softmaxes, two matmuls. Used by the tests and the benchmarks
as the parity reference; it takes an ``MSC``'s weights.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def dense_msc(msc, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    b, c, h, w = x.shape
    heads = msc.num_heads
    d = c // heads
    pooled = sum(F.avg_pool2d(y, p, 1, p // 2) for p in (3, 5, 7))
    tokens = F.layer_norm(
        pooled.flatten(2).transpose(1, 2), (c,), msc.layer_norm.weight, msc.layer_norm.bias
    )
    n1 = tokens.shape[1]
    kv = F.linear(tokens, msc.kv.weight, msc.kv.bias).reshape(b, n1, 2, heads, d)
    k, v = kv.permute(2, 0, 3, 1, 4)
    xt = x.flatten(2).transpose(1, 2)
    q = F.linear(xt, msc.q.weight, msc.q.bias).reshape(b, h * w, heads, d).transpose(1, 2)
    attn = (q @ k.transpose(-2, -1)) * msc.scale
    outs = []
    for kk in (n1 // msc.k1, n1 // msc.k2):
        kk = max(1, kk)
        mask = torch.zeros_like(attn)
        mask.scatter_(-1, torch.topk(attn, kk, dim=-1).indices, 1.0)
        sparse = torch.where(mask > 0, attn, torch.full_like(attn, float("-inf")))
        outs.append(sparse.softmax(dim=-1) @ v)
    out = outs[0] * msc.attn1 + outs[1] * msc.attn2
    out = F.linear(out.transpose(1, 2).reshape(b, h * w, c), msc.proj.weight, msc.proj.bias)
    return out.transpose(1, 2).reshape(b, c, h, w)
