"""Whether a model's mixed precision agrees with its float32 forward, per checkpoint.

The ``torch-bf16`` backend runs a model's ``forward_mixed`` (convolutions in
bf16, the rest in float32). How far that moves the probabilities depends on
the weights: the MSC top-k selections of one model may sit closer to ties than
another's. So ``train`` measures it on the run's validation images when it
ends and records the figures in the checkpoint (``meta.metrics["mixed_precision"]``),
and ``--backend auto`` picks ``torch-bf16`` only for a checkpoint whose record
meets the project's bar (:data:`SAME_CLASS_BAR`, :data:`MAX_ABS_DP_BAR`); any
other model gets an exact float32 backend by default.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from mscn_geo.models import add_checkpoint_metrics, load_checkpoint
from mscn_geo.pipeline import prepare_model

__all__ = [
    "CHECK_IMAGES",
    "MAX_ABS_DP_BAR",
    "SAME_CLASS_BAR",
    "MixedAgreement",
    "measure_mixed_agreement",
    "record_mixed_agreement",
    "recorded_agreement",
]

#: Share of images whose class must be the float32 one.
SAME_CLASS_BAR = 0.995
#: Largest change of any class probability allowed.
MAX_ABS_DP_BAR = 0.01
#: Validation images measured at most (enough to see 99.5 %; bounded time).
CHECK_IMAGES = 512
#: Key of the record in a checkpoint's ``meta.metrics``.
METRICS_KEY = "mixed_precision"


@dataclass(frozen=True)
class MixedAgreement:
    """Mixed precision vs float32 on ``images`` validation images.

    Attributes:
        images: images compared.
        same_class: share of them with the same top class (0..1).
        max_abs_dp: largest absolute difference of any class probability.
        dtype: the convolutions' dtype (``bfloat16``).
        device: where it was measured (``cpu`` or ``cuda``).
    """

    images: int
    same_class: float
    max_abs_dp: float
    dtype: str
    device: str

    @property
    def passes(self) -> bool:
        """Whether it meets the bar (and measured anything)."""
        return (
            self.images > 0
            and self.same_class >= SAME_CLASS_BAR
            and self.max_abs_dp <= MAX_ABS_DP_BAR
        )

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passes": self.passes}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MixedAgreement:
        return cls(
            images=int(data["images"]),
            same_class=float(data["same_class"]),
            max_abs_dp=float(data["max_abs_dp"]),
            dtype=str(data["dtype"]),
            device=str(data["device"]),
        )


def measure_mixed_agreement(
    model: nn.Module,
    batches: Iterable[torch.Tensor],
    device: torch.device,
    dtype: torch.dtype = torch.bfloat16,
    limit: int = CHECK_IMAGES,
) -> MixedAgreement:
    """Compare ``model.forward_mixed`` with the float32 forward, both as classify runs them.

    Args:
        model: a network with ``forward_mixed`` (left as it was: runners are copies).
        batches: normalised (B, bands, T, T) float batches (any device).
        device: where to run both.
        limit: images compared at most (the first ones).
    """
    fp32 = prepare_model(model, device, None)
    mixed = prepare_model(model, device, None, mixed=dtype)
    images = same = 0
    max_dp = 0.0
    with torch.inference_mode():
        for x in batches:
            x = x[: limit - images].to(device)
            if len(x) == 0:
                break
            x = x.contiguous(memory_format=torch.channels_last)
            ref, got = fp32(x), mixed(x)
            same += int((got.argmax(1) == ref.argmax(1)).sum())
            max_dp = max(max_dp, float((got - ref).abs().max()))
            images += len(x)
            if images >= limit:
                break
    return MixedAgreement(
        images=images,
        same_class=same / images if images else 0.0,
        max_abs_dp=max_dp,
        dtype=str(dtype).removeprefix("torch."),
        device=device.type,
    )


def recorded_agreement(metrics: dict[str, Any]) -> MixedAgreement | None:
    """The record in a checkpoint's ``meta.metrics``; ``None`` when absent or unreadable."""
    data = metrics.get(METRICS_KEY)
    if not isinstance(data, dict):
        return None
    try:
        return MixedAgreement.from_dict(data)
    except (KeyError, TypeError, ValueError):
        return None


def record_mixed_agreement(
    path: str | os.PathLike[str],
    batches: Iterable[torch.Tensor],
    device: torch.device,
    limit: int = CHECK_IMAGES,
) -> MixedAgreement | None:
    """Measure the checkpoint at ``path`` (:func:`measure_mixed_agreement`) and record
    the result in its ``meta.metrics`` (:func:`~mscn_geo.models.add_checkpoint_metrics`).

    ``batches``: its validation images, normalised. Returns ``None`` (nothing
    written) for a model without ``forward_mixed`` or when no image was given.
    """
    loaded = load_checkpoint(path)
    if not loaded.mixed_precision:
        return None
    mixed = measure_mixed_agreement(loaded.model, batches, device, limit=limit)
    if mixed.images == 0:
        return None
    add_checkpoint_metrics(path, {METRICS_KEY: mixed.to_dict()})
    return mixed
