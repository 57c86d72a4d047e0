"""``train``: one run from options to checkpoint, in named steps.

check options -> claim output files -> load and split chips -> build model,
optimiser, schedule -> (restore a resumed state) -> epochs (train, validate,
keep the best, write the resumable state now and then) -> config and curves ->
the best checkpoint's mixed-precision agreement with float32, recorded in it.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from mscn_geo.augment import BatchAugment
from mscn_geo.backends import native_bf16
from mscn_geo.cpu_allocator import keep_large_allocations
from mscn_geo.device import autocast_dtype, resolve_device
from mscn_geo.errors import CheckpointError, DatasetError
from mscn_geo.evaluate import eval_transform, evaluate_dataset
from mscn_geo.mixed_agreement import MixedAgreement, record_mixed_agreement
from mscn_geo.models import ModelMeta, create_model, read_checkpoint, save_checkpoint
from mscn_geo.training.config import TrainConfig, config_for_resume, make_config
from mscn_geo.training.data_setup import DEFAULT_PIXEL_SIZE_M, TrainingData, prepare_data
from mscn_geo.training.loop import EpochLog, StepContext, device_cache, train_one_epoch
from mscn_geo.training.model_setup import (
    BuiltModel,
    build_model,
    make_optimizer,
    set_backbone_frozen,
)
from mscn_geo.training.outputs import RunFiles
from mscn_geo.training.schedule import (
    EpochPlan,
    batch_mixer,
    make_ema,
    make_scheduler,
    seed_everything,
)

__all__ = ["SELECTION_NOTE", "train"]

BAND_NAMES_RGB = ["red", "green", "blue"]

#: Why a checkpoint's own validation figure is not a held-out accuracy.
SELECTION_NOTE = (
    "the best epoch is chosen on this validation split, so this figure is optimistic; "
    "evaluate on images never used in training for an unbiased one"
)


def train(
    out: Path,
    cfg: TrainConfig | None,
    data_dir: Path | None = None,
    val_dir: Path | None = None,
    dataset: str | None = None,
    root: Path | None = None,
    resume: Path | None = None,
    overwrite: bool = False,
    on_epoch: Callable[[EpochLog], None] | None = None,
    on_step: Callable[[int, int], None] | None = None,
    on_warning: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Train a model and write ``out`` (best on validation) and ``<out>_last.pt``.

    Also writes ``<out>_log.jsonl`` (one line per epoch), ``<out>_curve.png``
    and ``<out>_config.yaml`` (the config used).

    Args:
        cfg: the options (checked before any data is read). With ``resume``:
            ``None`` continues with the stored options; otherwise only its
            run-time fields (:data:`~mscn_geo.training.config.RUNTIME_FIELDS`)
            may differ from them.
        data_dir: an ImageFolder of chips (with ``chips.json``: its split and
            input description are used). Or ``dataset`` (torchgeo name) + ``root``.
        val_dir: a separate validation ImageFolder.
        resume: a ``<out>_last.pt`` to continue from.
        overwrite: replace the files of an earlier run (refused otherwise).
        on_warning: receives each warning as it arises (also in the summary).

    Returns:
        A summary: best validation OA, epochs (= lines of the log), seconds,
        device, paths, warnings.

    Raises:
        OptionError, DatasetError, CheckpointError, OutputError: before training
        starts whenever the cause is known then.
    """
    t_start = time.time()
    warnings: list[str] = []

    def warn(message: str) -> None:
        warnings.append(message)
        if on_warning:
            on_warning(message)

    state = _read_resume_state(resume) if resume is not None else None
    given = dataclasses.asdict(cfg) if cfg is not None else None
    if state is not None:
        cfg = config_for_resume(state["train_state"]["config"], given)
    elif given is None:
        raise ValueError("cfg is needed unless resuming")
    else:
        cfg = make_config(given)
    files = RunFiles(Path(out))
    files.claim(overwrite, resuming=state is not None)
    device = resolve_device(cfg.device)
    if device.type == "cpu":
        keep_large_allocations()  # activations and gradients reuse heap pages

    seed_everything(cfg.seed)
    data = prepare_data(cfg, data_dir, val_dir, dataset, root, on_warning=warn)
    classes, bands = data.train.classes, data.train.bands
    if state is None:
        built = build_model(cfg, classes, bands)
        mean, std = (
            (built.init.meta.mean, built.init.meta.std)
            if built.init
            else data.train.channel_stats()
        )
    else:
        built = _resumed_model(state, classes, bands)
        mean, std = state["meta"]["mean"], state["meta"]["std"]
    meta = _model_meta(cfg, data, built, mean, std, warn)
    model = built.model

    amp_dtype = autocast_dtype(device, cfg.amp)
    memory_format = torch.channels_last if cfg.channels_last and device.type == "cuda" else None
    model.to(device, memory_format=memory_format) if memory_format else model.to(device)
    optimizer = make_optimizer(model, cfg)
    steps_per_epoch = max(1, len(data.train) // cfg.batch_size)
    budget_s = cfg.time_budget_min * 60 if cfg.time_budget_min else None
    plan = EpochPlan(cfg.epochs, budget_s)
    scheduler = make_scheduler(optimizer, cfg, steps_per_epoch, plan)
    ctx = StepContext(
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16),
        criterion=nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing),
        augment=BatchAugment(
            data.tile_size,
            mean,
            std,
            scale=(cfg.crop_scale_min, 1.0),
            magnitude=cfg.randaugment_magnitude,
            erasing=cfg.random_erasing,
        ).to(device),
        mixer=batch_mixer(cfg, len(classes)),
        ema=make_ema(model, cfg),
        device=device,
        amp_dtype=amp_dtype,
        memory_format=memory_format,
        batch_size=cfg.batch_size,
        deadline=t_start + budget_s if budget_s is not None else None,
        reserve_images=len(data.val) * (2 if cfg.ema_decay > 0 else 1),
    )

    start_epoch, best, history = 0, -1.0, []
    if state is not None:
        start_epoch, best, history = _restore(ctx, state, plan, cfg)
    files.start_log(history)

    data.val.transform = eval_transform(mean, std)
    val_loader = DataLoader(data.val, batch_size=cfg.batch_size * 2, num_workers=0)
    images, labels = device_cache(data.train, device)
    generator = torch.Generator()
    last_written = time.time()
    epoch = start_epoch
    while epoch < plan.epochs:
        t0 = time.time()
        # Per-epoch seeds make each epoch reproducible on its own: resume is exact.
        seed_everything(cfg.seed * 100_003 + epoch)
        generator.manual_seed(cfg.seed * 100_003 + epoch)
        order = torch.randperm(len(data.train), generator=generator)
        model.train()
        set_backbone_frozen(model, epoch < cfg.freeze_epochs)
        train_loss = train_one_epoch(ctx, images, labels, order, on_step)
        val = evaluate_dataset(model, data.val, device, amp_dtype, loader=val_loader)
        val_ema = (
            evaluate_dataset(ctx.ema.module, data.val, device, amp_dtype, loader=val_loader)
            if ctx.ema is not None
            else None
        )
        entry = EpochLog(
            epoch=epoch + 1,
            lr=optimizer.param_groups[-1]["lr"],
            train_loss=train_loss,
            val_loss=val["loss"],
            val_oa=val["overall_accuracy"],
            val_oa_ema=val_ema["overall_accuracy"] if val_ema else None,
            seconds=time.time() - t0,
        )
        history.append(dataclasses.asdict(entry))
        files.append_log(history[-1])
        epoch += 1
        plan.after_epoch(epoch, time.time() - t_start, time.time() - t0)
        candidates = [(entry.val_oa, model, "model")]
        if val_ema:
            candidates.append((val_ema["overall_accuracy"], ctx.ema.module, "ema"))
        score, chosen, which = max(candidates, key=lambda c: c[0])
        if score > best:
            best = score
            meta.metrics = {
                "val_overall_accuracy": score,
                "epoch": epoch,
                "weights": which,
                "val_images": len(data.val),
                "selection": SELECTION_NOTE,
            }
            save_checkpoint(
                files.out, chosen, built.arch, meta, arch_kwargs=built.arch_kwargs, half=True
            )
        due = time.time() - last_written >= cfg.last_every_min * 60
        if due or epoch >= plan.epochs:
            _write_last(files.last, ctx, built, meta, cfg, epoch, best, plan, history)
            last_written = time.time()
        if on_epoch:
            on_epoch(entry)
    files.write_config(dataclasses.asdict(cfg))
    files.write_curve(history)
    mixed = _record_mixed_agreement(files.out, device, (x for x, _ in val_loader))
    return {
        "best_val_overall_accuracy": best,
        "epochs": len(history),
        "planned_epochs": cfg.epochs,
        "train_chips": len(data.train),
        "val_chips": len(data.val),
        "seconds": time.time() - t_start,
        "device": str(device),
        "checkpoint": str(files.out),
        "last": str(files.last),
        "log": str(files.log),
        "selection": SELECTION_NOTE,
        "mixed_precision": mixed.to_dict() if mixed is not None else None,
        "warnings": warnings,
    }


def _record_mixed_agreement(
    path: Path, device: torch.device, batches: Iterable[torch.Tensor]
) -> MixedAgreement | None:
    """The best checkpoint's bf16 agreement, measured and recorded in it where bf16
    is native on ``device``; skipped (``None``) where it would be emulated (a CPU
    without native bf16: several times slower than float32) or is unsupported
    (older GPUs). Such a checkpoint runs in float32 by default."""
    native = torch.cuda.is_bf16_supported() if device.type == "cuda" else native_bf16()
    if not (native and path.is_file()):
        return None
    return record_mixed_agreement(path, batches, device)


def _read_resume_state(path: Path) -> dict[str, Any]:
    state = read_checkpoint(path)
    if "train_state" not in state:
        raise CheckpointError(f"{path} has no training state to resume from")
    return state


def _resumed_model(state: dict[str, Any], classes: list[str], bands: int) -> BuiltModel:
    stored = state["meta"]["class_names"]
    if stored != classes:
        raise DatasetError(
            f"the chips' classes ({', '.join(classes)}) are not those of the run being "
            f"resumed ({', '.join(stored)})"
        )
    kwargs = dict(state.get("arch_kwargs", {}))
    model = create_model(state["arch"], num_classes=len(classes), in_chans=bands, **kwargs)
    model.load_state_dict(state["state_dict"])
    return BuiltModel(model, state["arch"], kwargs)


def _restore(
    ctx: StepContext, state: dict[str, Any], plan: EpochPlan, cfg: TrainConfig
) -> tuple[int, float, list[dict[str, Any]]]:
    """Optimizer, scheduler, scaler and EMA state of a resumed run; its epoch, best and history."""
    ts = state["train_state"]
    ctx.optimizer.load_state_dict(ts["optimizer"])
    ctx.scheduler.load_state_dict(ts["scheduler"])
    ctx.scaler.load_state_dict(ts["scaler"])
    if ctx.ema is not None and ts.get("ema") is not None:
        ctx.ema.load_state_dict(ts["ema"])
    # Epochs not asked for again: the stored plan (a time budget may have shortened it).
    if cfg.epochs == ts["config"]["epochs"]:
        plan.epochs = ts["planned_epochs"]
    return ts["epoch"], ts["best"], list(ts["history"])


def _model_meta(
    cfg: TrainConfig,
    data: TrainingData,
    built: BuiltModel,
    mean: list[float],
    std: list[float],
    warn: Callable[[str], None],
) -> ModelMeta:
    init = built.init.meta if built.init else None
    bands = data.train.bands
    band_names = data.band_names or (init.bands if init else None)
    if band_names is None:
        band_names = BAND_NAMES_RGB if bands == 3 else [f"band{i + 1}" for i in range(bands)]
    pixel_size = data.pixel_size_m
    if pixel_size is None:
        pixel_size = init.pixel_size_m if init else DEFAULT_PIXEL_SIZE_M
        warn(
            f"the chips carry no pixel size (not georeferenced, no chips.json): recording "
            f"{pixel_size:g} m; set pixel_size_m if that is wrong"
        )
    described = data.described
    if built.init is not None:
        copied = f", head rows of {len(built.copied_classes)} same-named classes kept"
        described += f"; fine-tuned from {built.init.label}{copied if built.copied_classes else ''}"
    return ModelMeta(
        class_names=data.train.classes,
        bands=list(band_names),
        mean=[float(m) for m in mean],
        std=[float(s) for s in std],
        tile_size=data.tile_size,
        pixel_size_m=float(pixel_size),
        training_data=described,
        trained=True,
        recipe=dataclasses.asdict(cfg),
        created=time.strftime("%Y-%m-%d"),
        scaling=data.scaling.to_dict() if data.scaling else None,
        scene_bands=data.scene_bands,
        val_files=data.val_files,
    )


def _write_last(
    path: Path,
    ctx: StepContext,
    built: BuiltModel,
    meta: ModelMeta,
    cfg: TrainConfig,
    epoch: int,
    best: float,
    plan: EpochPlan,
    history: list[dict[str, Any]],
) -> None:
    """The resumable state: fp32 weights once (as the checkpoint's weights) + optimiser state."""
    train_state = {
        "config": dataclasses.asdict(cfg),
        "epoch": epoch,
        "best": best,
        "planned_epochs": plan.epochs,
        "history": history,
        "optimizer": ctx.optimizer.state_dict(),
        "scheduler": ctx.scheduler.state_dict(),
        "scaler": ctx.scaler.state_dict(),
        "ema": ctx.ema.state_dict() if ctx.ema is not None else None,
    }
    save_checkpoint(
        path,
        ctx.model,
        built.arch,
        meta,
        arch_kwargs=built.arch_kwargs,
        extra={"train_state": train_state},
    )
