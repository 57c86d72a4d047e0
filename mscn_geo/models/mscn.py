"""MSCN: ResNet features, three MSC cross-fusions, GCE, linear classifier.

Also registers the plain ResNets (same stem, same classifier head on layer4)
used as the ablation baseline: the same backbone without MSC/GCE.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from mscn_geo.models.gce import GCE
from mscn_geo.models.msc import MSC
from mscn_geo.models.registry import register_model


def _resnet(name: str, in_chans: int) -> nn.Module:
    import torchvision  # here, not at import: a cached ONNX graph runs without it (0.9 s)

    net = getattr(torchvision.models, name)(weights=None)
    if in_chans != 3:
        net.conv1 = nn.Conv2d(in_chans, 64, kernel_size=7, stride=2, padding=3, bias=False)
    net.fc = nn.Identity()  # the backbone's own classifier is never used
    return net


def _stage_channels(stage: nn.Module) -> int:
    return [m for m in stage.modules() if isinstance(m, nn.BatchNorm2d)][-1].num_features


class MSCN(nn.Module):
    """Multiscale sparse cross-attention network.

    Args:
        backbone: torchvision ResNet name (``resnet18``, ``resnet34``, ``resnet50``).
        num_classes: classifier outputs.
        in_chans: input bands.
        dim: common width d of the four projected maps.
        num_heads, k1, k2: MSC options.
        groups: GCE groups.
        drop_rate: dropout before the classifier.

    Shapes:
        (B, in_chans, H, W) -> logits (B, num_classes); any H, W >= 32.
        The backbone keeps torchvision's parameter names under ``backbone.``
        so torchvision/timm ResNet weights load into it directly.
    """

    def __init__(
        self,
        backbone: str = "resnet50",
        num_classes: int = 21,
        in_chans: int = 3,
        dim: int = 512,
        num_heads: int = 8,
        k1: int = 2,
        k2: int = 6,
        groups: int = 8,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        self.backbone = _resnet(backbone, in_chans)
        bb = self.backbone
        c1, c2, c3, c4 = (_stage_channels(s) for s in (bb.layer1, bb.layer2, bb.layer3, bb.layer4))
        self.proj1 = nn.Conv2d(c1, dim, 3, stride=2, padding=1)
        self.proj2 = nn.Conv2d(c2, dim, 3, stride=2, padding=1)
        self.proj3 = nn.Conv2d(c3, dim, 3, stride=2, padding=1)
        self.proj4 = nn.Conv2d(c4, dim, 1)
        self.msc = nn.ModuleList(MSC(dim, num_heads=num_heads, k1=k1, k2=k2) for _ in range(3))
        self.gce = GCE(4 * dim, groups=groups)
        self.drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(4 * dim, num_classes)

    def conv_maps(self, x: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor]]:
        """The convolutional part: (B, in_chans, H, W) -> the query map (B, dim, H/32, W/32)
        and the three projected lower-level maps (B, dim, H/8, W/8), (H/16), (H/32)."""
        bb = self.backbone
        x = bb.maxpool(bb.relu(bb.bn1(bb.conv1(x))))
        l1 = bb.layer1(x)
        l2 = bb.layer2(l1)
        l3 = bb.layer3(l2)
        l4 = bb.layer4(l3)
        return self.proj4(l4), (self.proj1(l1), self.proj2(l2), self.proj3(l3))

    def fuse(self, query: Tensor, lows: tuple[Tensor, ...]) -> Tensor:
        """The MSC cross-fusions and GCE: -> enhanced fused map (B, 4*dim, H/32, W/32)."""
        fused = [msc(query, low) for msc, low in zip(self.msc, lows, strict=True)]
        return self.gce(torch.cat([query, *fused], dim=1))

    def features(self, x: Tensor) -> Tensor:
        """(B, in_chans, H, W) -> enhanced fused map (B, 4*dim, H/32, W/32)."""
        return self.fuse(*self.conv_maps(x))

    def classify(self, features: Tensor) -> Tensor:
        """Enhanced fused map -> logits (B, num_classes)."""
        return self.head(self.drop(features.mean((2, 3))))

    def forward(self, x: Tensor) -> Tensor:
        return self.classify(self.features(x))

    def forward_mixed(self, x: Tensor, dtype: torch.dtype) -> Tensor:
        """Logits with only the convolutions (backbone, projections) autocast to ``dtype``.

        The attention fusions, the enhancer and the head run in float32: bf16 scores
        tie at the top-k thresholds (whole-model bf16 moved the bundled model's
        probabilities by up to 0.09), bf16 logits shift probabilities by up to 0.01.
        Convolutions are about 95 % of the model's FLOPs, so this keeps most of
        bf16's speed; the probabilities stay within 0.006 of float32 on the 1,680
        UC Merced images (benchmarks/bench_backends.py). Inference only.
        """
        device = x.device.type
        with torch.autocast(device, dtype=dtype):
            query, lows = self.conv_maps(x)
        with torch.autocast(device, enabled=False):
            return self.classify(self.fuse(query.float(), tuple(low.float() for low in lows)))


class PlainResNet(nn.Module):
    """A torchvision ResNet with the same head as MSCN: the ablation baseline."""

    def __init__(
        self, backbone: str, num_classes: int, in_chans: int = 3, drop_rate: float = 0.0
    ) -> None:
        super().__init__()
        self.backbone = _resnet(backbone, in_chans)
        self.drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(_stage_channels(self.backbone.layer4), num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.drop(self.backbone(x)))


# Widths d follow the authors: 512 with ResNet-50, 128 with ResNet-34 (and 18).
@register_model(mixed_precision=True)
def mscn_resnet18(num_classes: int, in_chans: int = 3, **kw: Any) -> MSCN:
    return MSCN("resnet18", num_classes, in_chans, **{"dim": 128, **kw})


@register_model(mixed_precision=True)
def mscn_resnet34(num_classes: int, in_chans: int = 3, **kw: Any) -> MSCN:
    return MSCN("resnet34", num_classes, in_chans, **{"dim": 128, **kw})


@register_model(mixed_precision=True)
def mscn_resnet50(num_classes: int, in_chans: int = 3, **kw: Any) -> MSCN:
    return MSCN("resnet50", num_classes, in_chans, **{"dim": 512, **kw})


@register_model
def resnet18(num_classes: int, in_chans: int = 3, **kw: Any) -> PlainResNet:
    return PlainResNet("resnet18", num_classes, in_chans, **kw)


@register_model
def resnet34(num_classes: int, in_chans: int = 3, **kw: Any) -> PlainResNet:
    return PlainResNet("resnet34", num_classes, in_chans, **kw)


@register_model
def resnet50(num_classes: int, in_chans: int = 3, **kw: Any) -> PlainResNet:
    return PlainResNet("resnet50", num_classes, in_chans, **kw)
