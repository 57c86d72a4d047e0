"""Choosing the device and the mixed-precision (AMP) dtype for inference."""

from __future__ import annotations

import torch

from mscn_geo.errors import OptionError


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cpu``; ``cuda`` or ``cuda:N``.

    Raises:
        OptionError: unknown name, or CUDA asked for but not available.
    """
    name = name.strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise OptionError(
            f"device must be auto, cpu or cuda[:N], got {name!r}", field="device"
        ) from None
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise OptionError(f"device must be auto, cpu or cuda[:N], got {name!r}", field="device")
    if not torch.cuda.is_available():
        raise OptionError(
            "device='cuda': no CUDA GPU is available (use device='cpu')", field="device"
        )
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise OptionError(
            f"device={name!r}: only {torch.cuda.device_count()} GPU(s)", field="device"
        )
    return device


def autocast_dtype(device: torch.device, amp: bool | None = None) -> torch.dtype | None:
    """The autocast dtype, or ``None`` for full fp32.

    AMP defaults to on for CUDA (bf16 where supported, else fp16) and off for
    CPU; ``amp=True`` on CPU uses bf16.
    """
    if amp is None:
        amp = device.type == "cuda"
    if not amp:
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16


def amp_name(dtype: torch.dtype | None) -> str:
    """``"bf16"``, ``"fp16"`` or ``"off"`` for reports."""
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "off")  # type: ignore[arg-type]
