"""Training: the authors' recipe, from scratch or from local backbone weights.

Recipe (../shared/reference/MSCN.md): AdamW, cosine schedule with linear
warm-up, label smoothing, MixUp/CutMix, RandAugment, random erasing, AMP on
CUDA. Model selection uses the validation split only. Every epoch writes the
last checkpoint (with optimizer, scheduler, EMA and RNG state) so a killed run
continues exactly with ``resume``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from mscn_geo.augment import BatchAugment
from mscn_geo.data import ChipDataset, load_image_folder, load_torchgeo_dataset, stratified_split
from mscn_geo.device import autocast_dtype, resolve_device
from mscn_geo.errors import CheckpointError, DatasetError, OptionError
from mscn_geo.evaluate import eval_transform, evaluate_dataset
from mscn_geo.io.atomic import atomic_file
from mscn_geo.models import ModelMeta, create_model, read_checkpoint, save_checkpoint

BAND_NAMES_RGB = ["red", "green", "blue"]


@dataclass
class TrainConfig:
    """Every training knob. Defaults: the authors' recipe, scaled for scratch training."""

    arch: str = "mscn_resnet18"
    input_size: int = 256
    epochs: int = 300
    batch_size: int = 64
    lr: float = 2e-3
    min_lr: float = 1e-5
    weight_decay: float = 0.05
    warmup_epochs: int = 5
    label_smoothing: float = 0.1
    mixup_alpha: float = 0.8
    cutmix_alpha: float = 1.0
    mix_prob: float = 1.0
    randaugment_magnitude: int = 9
    crop_scale_min: float = 0.35
    random_erasing: float = 0.25
    drop_rate: float = 0.0
    ema_decay: float = 0.0
    val_fraction: float = 0.2
    seed: int = 0
    device: str = "auto"
    amp: bool | None = None
    channels_last: bool = True
    time_budget_min: float | None = None
    pixel_size_m: float = 0.3
    init_backbone: str | None = None
    arch_kwargs: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_file(cls, path: Path, **overrides: Any) -> TrainConfig:
        """Read a YAML or TOML file of knobs; ``overrides`` win."""
        text = Path(path).read_text()
        if Path(path).suffix.lower() == ".toml":
            import tomllib

            raw = tomllib.loads(text)
        else:
            import yaml

            raw = yaml.safe_load(text) or {}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(raw) - known
        if unknown:
            raise OptionError(f"unknown training options in {path}: {', '.join(sorted(unknown))}")
        return cls(**{**raw, **overrides})


@dataclass
class EpochLog:
    epoch: int
    lr: float
    train_loss: float
    val_loss: float
    val_oa: float
    val_oa_ema: float | None
    seconds: float


def _batch_mixer(cfg: TrainConfig, num_classes: int):
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


def _lr_factor(step: int, warmup: int, total: int, floor: float) -> float:
    if step < warmup:
        return (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


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


def _prepare_data(
    cfg: TrainConfig,
    data_dir: Path | None,
    val_dir: Path | None,
    dataset: str | None,
    root: Path | None,
) -> tuple[ChipDataset, ChipDataset, str]:
    if dataset:
        if root is None:
            raise OptionError("--dataset needs --root (the folder that already holds it)")
        full = load_torchgeo_dataset(dataset, root, cfg.input_size)
        described = f"torchgeo {dataset} at {root}"
    elif data_dir is not None:
        full = load_image_folder(data_dir, cfg.input_size)
        described = f"image folders {data_dir}"
    else:
        raise OptionError("give a DATA_DIR or --dataset with --root")
    if val_dir is not None:
        val = load_image_folder(val_dir, cfg.input_size, bands=full.bands)
        if val.classes != full.classes:
            raise DatasetError(f"{val_dir} classes differ from the training classes")
        return full, val, described + f"; validation {val_dir}"
    tr, va = stratified_split(full.labels, cfg.val_fraction, cfg.seed)
    described += f"; stratified split, {len(tr)} train / {len(va)} val, seed {cfg.seed}"
    return full.subset(tr), full.subset(va), described


def train(
    out: Path,
    cfg: TrainConfig,
    data_dir: Path | None = None,
    val_dir: Path | None = None,
    dataset: str | None = None,
    root: Path | None = None,
    resume: Path | None = None,
    on_epoch: Callable[[EpochLog], None] | None = None,
    on_step: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Train a model and write ``out`` (best on validation) and ``<out>_last.pt``.

    Also writes ``<out>_log.jsonl`` (one line per epoch), ``<out>_curve.png``
    and ``<out>_config.yaml`` (the config used). Returns a summary dict.
    """
    out = Path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OptionError(f"cannot create output folder {out.parent}: {exc.strerror}") from exc
    stem = out.with_suffix("")
    last_path = Path(f"{stem}_last.pt")
    log_path = Path(f"{stem}_log.jsonl")
    state: dict[str, Any] | None = None
    if resume is not None:
        state = read_checkpoint(resume)
        if "train_state" not in state:
            raise CheckpointError(f"{resume} has no training state to resume from")
        cfg = TrainConfig(**state["train_state"]["config"])

    _seed_everything(cfg.seed)
    train_set, val_set, described = _prepare_data(cfg, data_dir, val_dir, dataset, root)
    classes, bands = train_set.classes, train_set.bands
    mean, std = train_set.channel_stats()
    if state is not None:
        mean, std = state["meta"]["mean"], state["meta"]["std"]
    val_set.transform = eval_transform(mean, std)

    device = resolve_device(cfg.device)
    amp_dtype = autocast_dtype(device, cfg.amp)
    model = create_model(cfg.arch, num_classes=len(classes), in_chans=bands, **_arch_kwargs(cfg))
    if cfg.init_backbone and state is None:
        load_backbone_weights(model, Path(cfg.init_backbone))
    memory_format = torch.channels_last if cfg.channels_last and device.type == "cuda" else None
    model.to(device, memory_format=memory_format) if memory_format else model.to(device)

    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0},
        ],
        lr=cfg.lr,
    )
    steps_per_epoch = max(1, len(train_set) // cfg.batch_size)
    plan = {"epochs": cfg.epochs}
    if state is not None:
        plan["epochs"] = state["train_state"]["planned_epochs"]
    warmup_steps = cfg.warmup_epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: _lr_factor(
            s, warmup_steps, plan["epochs"] * steps_per_epoch, cfg.min_lr / cfg.lr
        ),
    )
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    ema = None
    if cfg.ema_decay > 0:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        ema = AveragedModel(
            model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True
        )
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    mixer = _batch_mixer(cfg, len(classes))

    start_epoch, best, history = 0, -1.0, []
    if state is not None:
        ts = state["train_state"]
        model.load_state_dict(state["state_dict"])
        optimizer.load_state_dict(ts["optimizer"])
        scheduler.load_state_dict(ts["scheduler"])
        scaler.load_state_dict(ts["scaler"])
        if ema is not None and ts.get("ema") is not None:
            ema.load_state_dict(ts["ema"])
        start_epoch, best, history = ts["epoch"] + 1, ts["best"], ts["history"]
    elif log_path.exists():
        log_path.unlink()

    meta = ModelMeta(
        class_names=classes,
        bands=BAND_NAMES_RGB if bands == 3 else [f"band{i + 1}" for i in range(bands)],
        mean=[float(m) for m in mean],
        std=[float(s) for s in std],
        tile_size=cfg.input_size,
        pixel_size_m=cfg.pixel_size_m,
        training_data=described,
        trained=True,
        recipe=dataclasses.asdict(cfg),
        created=time.strftime("%Y-%m-%d"),
    )
    val_loader = DataLoader(val_set, batch_size=cfg.batch_size * 2, num_workers=0)
    augment = BatchAugment(
        cfg.input_size,
        mean,
        std,
        scale=(cfg.crop_scale_min, 1.0),
        magnitude=cfg.randaugment_magnitude,
        erasing=cfg.random_erasing,
    ).to(device)
    images, labels = _device_cache(train_set, device)
    generator = torch.Generator()
    t_start = time.time()
    for epoch in range(start_epoch, plan["epochs"]):
        t0 = time.time()
        # Per-epoch seeds make each epoch reproducible on its own: resume is exact.
        _seed_everything(cfg.seed * 100_003 + epoch)
        generator.manual_seed(cfg.seed * 100_003 + epoch)
        order = torch.randperm(len(train_set), generator=generator)
        model.train()
        total, seen = 0.0, 0
        for step in range(steps_per_epoch):
            idx = order[step * cfg.batch_size : (step + 1) * cfg.batch_size]
            x = images[idx.to(images.device)].to(device, non_blocking=True)
            y = labels[idx.to(labels.device)].to(device, non_blocking=True)
            x = augment(x)
            if mixer is not None:
                x, y = mixer(x, y)
            if memory_format:
                x = x.contiguous(memory_format=memory_format)
            with torch.autocast(
                device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None
            ):
                loss = criterion(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            if ema is not None:
                ema.update_parameters(model)
            total += loss.item() * len(x)
            seen += len(x)
            if on_step:
                on_step(step + 1, steps_per_epoch)
        val = evaluate_dataset(model, val_set, device, amp_dtype, loader=val_loader)
        val_ema = (
            evaluate_dataset(ema.module, val_set, device, amp_dtype, loader=val_loader)
            if ema
            else None
        )
        entry = EpochLog(
            epoch=epoch + 1,
            lr=optimizer.param_groups[0]["lr"],
            train_loss=total / max(1, seen),
            val_loss=val["loss"],
            val_oa=val["overall_accuracy"],
            val_oa_ema=val_ema["overall_accuracy"] if val_ema else None,
            seconds=time.time() - t0,
        )
        history.append(dataclasses.asdict(entry))
        with log_path.open("a") as fh:
            fh.write(json.dumps(history[-1]) + "\n")
        if epoch == start_epoch and cfg.time_budget_min and state is None:
            fits = int(cfg.time_budget_min * 60 / max(entry.seconds, 1e-3))
            plan["epochs"] = max(cfg.warmup_epochs + 1, min(cfg.epochs, fits))
        candidates = [(entry.val_oa, model, "model")]
        if val_ema:
            candidates.append((val_ema["overall_accuracy"], ema.module, "ema"))
        score, chosen, which = max(candidates, key=lambda c: c[0])
        if score > best:
            best = score
            meta.metrics = {
                "val_overall_accuracy": score,
                "epoch": epoch + 1,
                "weights": which,
                "val_images": len(val_set),
            }
            save_checkpoint(out, chosen, cfg.arch, meta, arch_kwargs=_arch_kwargs(cfg), half=True)
        train_state = {
            "config": dataclasses.asdict(cfg),
            "epoch": epoch,
            "best": best,
            "planned_epochs": plan["epochs"],
            "history": history,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "ema": ema.state_dict() if ema else None,
        }
        save_checkpoint(
            last_path,
            model,
            cfg.arch,
            meta,
            arch_kwargs=_arch_kwargs(cfg),
            extra={"train_state": train_state},
        )
        if on_epoch:
            on_epoch(entry)
    _write_config(Path(f"{stem}_config.yaml"), cfg)
    _plot_curve(history, Path(f"{stem}_curve.png"))
    return {
        "best_val_overall_accuracy": best,
        "epochs": plan["epochs"],
        "seconds": time.time() - t_start,
        "device": str(device),
        "checkpoint": str(out),
        "last": str(last_path),
        "log": str(log_path),
    }


def _device_cache(ds: ChipDataset, device: torch.device) -> tuple[Tensor, Tensor]:
    """The uint8 training cache and labels; on the GPU when they fit in 1/4 of its free memory."""
    labels = torch.tensor(ds.labels, dtype=torch.long)
    if device.type == "cuda" and ds.images.numel() < torch.cuda.mem_get_info(device)[0] // 4:
        return ds.images.to(device), labels.to(device)
    images = ds.images.pin_memory() if device.type == "cuda" else ds.images
    return images, labels


def _arch_kwargs(cfg: TrainConfig) -> dict[str, Any]:
    return {**cfg.arch_kwargs, "drop_rate": cfg.drop_rate}


def _write_config(path: Path, cfg: TrainConfig) -> None:
    import yaml

    with atomic_file(path) as tmp:
        tmp.write_text(yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=True))


def _plot_curve(history: list[dict[str, Any]], path: Path) -> None:
    if not history:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [h["epoch"] for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.plot(ep, [h["train_loss"] for h in history], label="train loss")
    a.plot(ep, [h["val_loss"] for h in history], label="val loss")
    a.set_xlabel("epoch")
    a.legend()
    b.plot(ep, [h["val_oa"] for h in history], label="val OA")
    if history[0].get("val_oa_ema") is not None:
        b.plot(ep, [h["val_oa_ema"] for h in history], label="val OA (EMA)")
    b.set_xlabel("epoch")
    b.set_ylim(0, 1)
    b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
