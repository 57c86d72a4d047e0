"""GCE: grouped channel + spatial enhancer (MSCN paper, module 4)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class GCE(nn.Module):
    """Per-group CBAM-like enhancement, all groups in one pass via grouped convs.

    Each of ``groups`` channel groups gets its own channel attention (global
    average pool -> MLP C_g -> C_g/reduction -> C_g -> sigmoid) and its own
    spatial attention (1x1 conv -> 1 map -> sigmoid). The spatial map ``s`` is
    turned into ``mask = where(s > mean(s), 1, s)`` (mean per sample and
    group) and the group's features are scaled by ``1 + mask``.

    Shapes: (B, C, H, W) -> (B, C, H, W); C divisible by ``groups * reduction``.
    """

    def __init__(self, channels: int, groups: int = 8, reduction: int = 4) -> None:
        super().__init__()
        if channels % (groups * reduction):
            raise ValueError(f"channels {channels} not divisible by groups*reduction")
        self.groups = groups
        hidden = channels // reduction
        self.channel_mlp = nn.Sequential(
            nn.Conv2d(channels, hidden, 1, groups=groups),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, 1, groups=groups),
        )
        self.spatial = nn.Conv2d(channels, groups, 1, groups=groups)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        x = x * torch.sigmoid(self.channel_mlp(x.mean((2, 3), keepdim=True)))
        s = torch.sigmoid(self.spatial(x))
        mask = torch.where(s > s.mean((2, 3), keepdim=True), torch.ones_like(s), s)
        x = x.reshape(b, self.groups, c // self.groups, h, w) * (1 + mask).unsqueeze(2)
        return x.reshape(b, c, h, w)
