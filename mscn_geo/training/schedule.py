"""Learning-rate schedule, time budget, EMA, MixUp/CutMix and seeding of a run."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from mscn_geo.training.config import TrainConfig

__all__ = ["EpochPlan", "batch_mixer", "lr_factor", "make_ema", "make_scheduler", "seed_everything"]


def lr_factor(step: int, warmup: int, total: int, floor: float) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine from 1 to ``floor`` at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))


@dataclass
class EpochPlan:
    """How many epochs the run makes; a time budget can only shorten it.

    Attributes:
        epochs: the planned number of epochs (the cosine schedule ends there).
        budget_s: seconds the whole run may take (``None``: no budget).
    """

    epochs: int
    budget_s: float | None = None

    def after_epoch(self, done: int, elapsed_s: float, epoch_s: float) -> None:
        """Shorten the plan so that the next epochs end within the budget.

        ``done`` epochs are finished, ``elapsed_s`` seconds spent since the run
        started, the last epoch took ``epoch_s``. At least ``done`` epochs stay
        planned (none is cut short); the next one only if it fits.
        """
        if self.budget_s is None:
            return
        fits = int(max(0.0, self.budget_s - elapsed_s) // max(epoch_s, 1e-3))
        self.epochs = max(done, min(self.epochs, done + fits))


def make_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int, plan: EpochPlan
) -> torch.optim.lr_scheduler.LambdaLR:
    """Warm-up + cosine per step; follows ``plan.epochs`` when a time budget shortens it."""
    warmup = cfg.warmup_epochs * steps_per_epoch
    floor = cfg.min_lr / cfg.lr
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, warmup, plan.epochs * steps_per_epoch, floor)
    )


def make_ema(model: nn.Module, cfg: TrainConfig) -> nn.Module | None:
    """An exponential moving average of the weights (and buffers), or ``None`` when off."""
    if cfg.ema_decay <= 0:
        return None
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True)


def batch_mixer(cfg: TrainConfig, num_classes: int):
    """torchvision's MixUp/CutMix (one of them per batch), or ``None`` when both are off."""
    from torchvision.transforms import v2

    mixers = []
    if cfg.mixup_alpha > 0:
        mixers.append(v2.MixUp(alpha=cfg.mixup_alpha, num_classes=num_classes))
    if cfg.cutmix_alpha > 0:
        mixers.append(v2.CutMix(alpha=cfg.cutmix_alpha, num_classes=num_classes))
    if not mixers or cfg.mix_prob <= 0:
        return None
    choice = v2.RandomChoice(mixers)
    return v2.RandomApply([choice], p=cfg.mix_prob) if cfg.mix_prob < 1 else choice


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
