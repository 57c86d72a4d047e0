"""The model of a run: from scratch, from local backbone weights, or fine-tuned from a checkpoint.

Fine-tuning (``init``) keeps the checkpoint's architecture and every weight
but the classifier, which gets one row per class of the new data (copied from
the old head for classes of the same name). The optimiser gives the backbone
``backbone_lr_scale`` of the learning rate; ``freeze_epochs`` keeps it frozen
(no gradient, batch-norm statistics fixed) for the first epochs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mscn_geo.errors import CheckpointError, DatasetError
from mscn_geo.models import LoadedModel, create_model, load_checkpoint
from mscn_geo.training.config import TrainConfig

__all__ = [
    "BuiltModel",
    "build_model",
    "load_backbone_weights",
    "make_optimizer",
    "set_backbone_frozen",
]


@dataclass
class BuiltModel:
    """A model ready to train and what a checkpoint needs to rebuild it.

    Attributes:
        init: the checkpoint fine-tuned from (``None``: from scratch).
        copied_classes: classes whose head row came from ``init``.
    """

    model: nn.Module
    arch: str
    arch_kwargs: dict[str, Any]
    init: LoadedModel | None = None
    copied_classes: list[str] = field(default_factory=list)


def build_model(cfg: TrainConfig, classes: list[str], bands: int) -> BuiltModel:
    """The model for ``classes`` and ``bands`` input bands, initialised per ``cfg``.

    Raises:
        CheckpointError: ``init``/``init_backbone`` unreadable or not matching.
        DatasetError: the chips' band count differs from the ``init`` model's.
    """
    if cfg.init is None:
        kwargs = {**cfg.arch_kwargs, "drop_rate": cfg.drop_rate}
        model = create_model(cfg.arch, num_classes=len(classes), in_chans=bands, **kwargs)
        if cfg.init_backbone:
            load_backbone_weights(model, Path(cfg.init_backbone))
        return BuiltModel(model, cfg.arch, kwargs)
    init = load_checkpoint(None if cfg.init == "bundled" else Path(cfg.init))
    if init.meta.in_chans != bands:
        raise DatasetError(
            f"the chips have {bands} band(s); the model to fine-tune ({init.label}) takes "
            f"{init.meta.in_chans} ({', '.join(init.meta.bands)})"
        )
    kwargs = {**init.arch_kwargs, "drop_rate": cfg.drop_rate}
    model = create_model(init.arch, num_classes=len(classes), in_chans=bands, **kwargs)
    head = _head(model)
    old = init.model.state_dict()
    body = {k: v for k, v in old.items() if not k.startswith("head.")}
    missing, unexpected = model.load_state_dict(body, strict=False)
    if unexpected or any(not k.startswith("head.") for k in missing):
        raise CheckpointError(f"{init.label}: weights do not fit {init.arch} without its head")
    copied = []
    with torch.no_grad():
        for i, name in enumerate(classes):
            if name in init.meta.class_names:
                j = init.meta.class_names.index(name)
                head.weight[i] = old["head.weight"][j]
                head.bias[i] = old["head.bias"][j]
                copied.append(name)
    return BuiltModel(model, init.arch, kwargs, init, copied)


def _head(model: nn.Module) -> nn.Linear:
    head = getattr(model, "head", None)
    if not isinstance(head, nn.Linear):
        raise CheckpointError(f"{type(model).__name__} has no linear 'head' to replace")
    return head


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW over up to four groups: backbone / the rest, with / without weight decay.

    Biases and normalisation weights (1-d) get no weight decay; the backbone
    gets ``lr * backbone_lr_scale``.
    """
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        key = (name.startswith("backbone."), p.ndim > 1 and not name.endswith(".bias"))
        groups.setdefault(key, []).append(p)
    return torch.optim.AdamW(
        [
            {
                "params": params,
                "lr": cfg.lr * (cfg.backbone_lr_scale if in_backbone else 1.0),
                "weight_decay": cfg.weight_decay if decays else 0.0,
            }
            for (in_backbone, decays), params in sorted(groups.items())
        ],
        lr=cfg.lr,
    )


def set_backbone_frozen(model: nn.Module, frozen: bool) -> None:
    """Freeze (no gradients, batch-norm in eval mode) or release ``model.backbone``.

    Call after ``model.train()``: that would put the batch norms back in training mode.
    """
    backbone = getattr(model, "backbone", None)
    if backbone is None:
        return
    backbone.requires_grad_(not frozen)
    if frozen:
        backbone.eval()


def load_backbone_weights(model: nn.Module, path: Path) -> list[str]:
    """Load torchvision/timm/torchgeo ResNet weights from a local file into ``model.backbone``.

    Accepts a plain state dict, or one nested under ``state_dict``/``model``;
    strips ``module.``/``backbone.``/``model.`` prefixes and ignores the
    classifier (``fc.*``). A first conv with another band count is adapted by
    averaging its RGB filters. Returns the backbone keys that were not found.
    """
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"cannot read backbone weights {path}: {exc}") from exc
    for key in ("state_dict", "model"):
        if isinstance(raw, dict) and isinstance(raw.get(key), dict):
            raw = raw[key]
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path} holds no state dict")
    target = model.backbone.state_dict()
    state = {}
    for k, v in raw.items():
        for prefix in ("module.", "backbone.", "model."):
            k = k.removeprefix(prefix)
        if k.startswith("fc.") or k not in target:
            continue
        if k == "conv1.weight" and v.shape[1] != target[k].shape[1]:
            v = v.mean(1, keepdim=True).repeat(1, target[k].shape[1], 1, 1)
        if v.shape != target[k].shape:
            raise CheckpointError(
                f"{path}: {k} has shape {tuple(v.shape)}, model wants {tuple(target[k].shape)}"
            )
        state[k] = v
    if not state:
        raise CheckpointError(f"{path} has no weights matching a ResNet backbone")
    model.backbone.load_state_dict(state, strict=False)
    return sorted(set(target) - set(state))
