"""One training epoch over the uint8 chip cache: augment, mix, forward, backward, step."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from mscn_geo.data import ChipDataset

__all__ = ["EpochLog", "StepContext", "device_cache", "train_one_epoch"]


@dataclass
class EpochLog:
    """One line of ``<out>_log.jsonl``."""

    epoch: int
    lr: float
    train_loss: float
    val_loss: float
    val_oa: float
    val_oa_ema: float | None
    seconds: float


@dataclass
class StepContext:
    """What every training step uses; built once per run."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    criterion: nn.Module
    augment: nn.Module
    mixer: Any
    ema: nn.Module | None
    device: torch.device
    amp_dtype: torch.dtype | None
    memory_format: torch.memory_format | None
    batch_size: int
    deadline: float | None = None  # time.time() at which the time budget ends
    reserve_images: int = 0  # images still to score after the epoch (validation)


def train_one_epoch(
    ctx: StepContext,
    images: Tensor,
    labels: Tensor,
    order: Tensor,
    on_step: Callable[[int, int], None] | None = None,
) -> float:
    """Train on the chips in ``order`` (full batches only); returns the mean training loss.

    When the next step and the validation of ``ctx.reserve_images`` images
    (forward only, estimated at a third of a training step per image) would end
    past ``ctx.deadline``, the epoch ends early (after at least one step): a
    time budget is not overrun by a long epoch.

    Args:
        images: (N, C, H, W) uint8 chip cache; labels: (N,) class indices.
        order: a permutation of ``range(N)``.
    """
    steps = max(1, len(order) // ctx.batch_size)
    total, seen = 0.0, 0
    start = time.time()
    for step in range(steps):
        if step and ctx.deadline is not None:
            step_s = (time.time() - start) / step
            reserve_s = step_s / ctx.batch_size * ctx.reserve_images / 3
            if time.time() + step_s + reserve_s >= ctx.deadline:
                break
        idx = order[step * ctx.batch_size : (step + 1) * ctx.batch_size]
        x = images[idx.to(images.device)].to(ctx.device, non_blocking=True)
        y = labels[idx.to(labels.device)].to(ctx.device, non_blocking=True)
        x = ctx.augment(x)
        if ctx.mixer is not None:
            x, y = ctx.mixer(x, y)
        if ctx.memory_format:
            x = x.contiguous(memory_format=ctx.memory_format)
        with torch.autocast(
            ctx.device.type,
            dtype=ctx.amp_dtype or torch.float32,
            enabled=ctx.amp_dtype is not None,
        ):
            loss = ctx.criterion(ctx.model(x), y)
        ctx.optimizer.zero_grad(set_to_none=True)
        ctx.scaler.scale(loss).backward()
        ctx.scaler.step(ctx.optimizer)
        ctx.scaler.update()
        ctx.scheduler.step()
        if ctx.ema is not None:
            ctx.ema.update_parameters(ctx.model)
        total += loss.item() * len(x)
        seen += len(x)
        if on_step:
            on_step(step + 1, steps)
    return total / max(1, seen)


def device_cache(ds: ChipDataset, device: torch.device) -> tuple[Tensor, Tensor]:
    """The uint8 training cache and labels; on the GPU when they fit in 1/4 of its free memory."""
    labels = torch.tensor(ds.labels, dtype=torch.long)
    if device.type == "cuda" and ds.images.numel() < torch.cuda.mem_get_info(device)[0] // 4:
        return ds.images.to(device), labels.to(device)
    images = ds.images.pin_memory() if device.type == "cuda" else ds.images
    return images, labels
