"""Accuracy of a model on labelled chips: OA, mean per-class accuracy, kappa, P/R/F1."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from mscn_geo.data import ChipDataset, sample_key, scan_image_folder, stratified_split
from mscn_geo.errors import DatasetError, OptionError
from mscn_geo.io.atomic import atomic_file
from mscn_geo.scaling import Scaling


def eval_transform(mean: list[float], std: list[float]):
    """uint8 (C, H, W) -> float (C, H, W): pixel/255, then normalised per band."""
    from torchvision.transforms import v2

    return v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)])


def dihedral(x: Tensor) -> list[Tensor]:
    """The 8 flips/rotations of a batch (aerial scenes have no 'up')."""
    rots = [torch.rot90(x, k, dims=(-2, -1)) for k in range(4)]
    return rots + [r.flip(-1) for r in rots]


@torch.inference_mode()
def predict_dataset(
    model: nn.Module,
    dataset: ChipDataset,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    loader: DataLoader | None = None,
    tta: bool = False,
) -> tuple[Tensor, Tensor]:
    """Softmax probabilities (N, classes) and labels (N,) for every item, in order."""
    model.eval()
    loader = loader or DataLoader(dataset, batch_size=64, num_workers=0)
    probs, labels = [], []
    for x, y in loader:
        x = x.to(device)
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        views = dihedral(x) if tta else [x]
        with torch.autocast(
            device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None
        ):
            p = sum(F.softmax(model(v).float(), dim=1) for v in views) / len(views)
        probs.append(p.cpu())
        labels.append(torch.as_tensor(y))
    return torch.cat(probs), torch.cat(labels)


def evaluate_dataset(
    model: nn.Module,
    dataset: ChipDataset,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    loader: DataLoader | None = None,
) -> dict[str, float]:
    """Quick validation used during training: mean NLL loss and overall accuracy."""
    probs, labels = predict_dataset(model, dataset, device, amp_dtype, loader)
    loss = F.nll_loss(probs.clamp_min(1e-12).log(), labels).item()
    return {"loss": loss, "overall_accuracy": (probs.argmax(1) == labels).float().mean().item()}


def classification_metrics(preds: Tensor, labels: Tensor, classes: list[str]) -> dict[str, Any]:
    """OA, mean per-class accuracy, Cohen's kappa, per-class P/R/F1 and the confusion matrix.

    Rows of the confusion matrix are true classes, columns predicted classes.
    """
    from torchmetrics.functional.classification import (
        multiclass_accuracy,
        multiclass_cohen_kappa,
        multiclass_confusion_matrix,
        multiclass_f1_score,
        multiclass_precision,
        multiclass_recall,
    )

    n = len(classes)
    kw = {"num_classes": n}
    cm = multiclass_confusion_matrix(preds, labels, **kw)
    per_p = multiclass_precision(preds, labels, average="none", **kw)
    per_r = multiclass_recall(preds, labels, average="none", **kw)
    per_f = multiclass_f1_score(preds, labels, average="none", **kw)
    support = cm.sum(1)
    present = support > 0
    return {
        "n_images": int(labels.numel()),
        "classes": list(classes),
        "overall_accuracy": multiclass_accuracy(preds, labels, average="micro", **kw).item(),
        "mean_per_class_accuracy": per_r[present].mean().item() if present.any() else 0.0,
        "kappa": multiclass_cohen_kappa(preds, labels, **kw).item(),
        "per_class": {
            c: {
                "precision": per_p[i].item(),
                "recall": per_r[i].item(),
                "f1": per_f[i].item(),
                "support": int(support[i]),
            }
            for i, c in enumerate(classes)
        },
        "confusion_matrix": cm.tolist(),
    }


def load_labelled_folder(
    data_dir: Path,
    model_classes: list[str],
    size: int,
    bands: int,
    split: str = "all",
    val_fraction: float = 0.2,
    seed: int = 0,
    val_files: list[str] | None = None,
    scaling: Scaling | None = None,
) -> ChipDataset:
    """Chips of ``data_dir`` labelled with the *model's* class indices.

    Class folders are matched to the model's class names by name; a folder the
    model does not know is an error. ``split`` = ``val`` keeps the chips named
    in ``val_files`` (``class/file``, as the checkpoint stores them), ``train``
    every other one; without ``val_files`` the stratified split of training
    is rebuilt from ``val_fraction`` and ``seed``. Non-8-bit chips are mapped
    with ``scaling`` (the model's), else a stretch of this folder's chips.

    Raises:
        DatasetError: unknown class folder, unknown split, validation chips of
            ``val_files`` missing from ``data_dir``.
    """
    folder_classes, samples = scan_image_folder(data_dir)
    unknown = [c for c in folder_classes if c not in model_classes]
    if unknown:
        raise DatasetError(
            f"class folders not known to the model: {', '.join(unknown)} "
            f"(model classes: {', '.join(model_classes)})"
        )
    if split not in ("all", "train", "val"):
        raise DatasetError(f"unknown split {split!r} (all, train or val)")
    if split != "all" and val_files:
        keys = {sample_key(s.path): s for s in samples}
        missing = [k for k in val_files if k not in keys]
        if missing:
            raise DatasetError(
                f"{len(missing)} of the model's {len(val_files)} validation chips are not in "
                f"{data_dir}, e.g. {missing[0]}: evaluate the folder the model was trained on"
            )
        listed = set(val_files)
        samples = [s for s in samples if (sample_key(s.path) in listed) == (split == "val")]
    elif split != "all":
        tr, va = stratified_split([s.label for s in samples], val_fraction, seed)
        samples = [samples[i] for i in (va if split == "val" else tr)]
    if not samples:
        raise DatasetError(f"no chip of {data_dir} is in the {split} split")
    labels = [model_classes.index(folder_classes[s.label]) for s in samples]
    return ChipDataset(
        [s.path for s in samples], labels, model_classes, size=size, bands=bands, scaling=scaling
    )


def evaluate_folder(
    data_dir: Path,
    model_path: Path | None = None,
    out_dir: Path | None = None,
    split: str = "all",
    val_fraction: float | None = None,
    seed: int | None = None,
    device: str = "auto",
    amp: bool | None = None,
    batch_size: int = 32,
    tta: bool = False,
) -> dict[str, Any]:
    """Evaluate a checkpoint (default: the bundled model) on a labelled folder.

    Writes ``confusion_matrix.csv`` and ``confusion_matrix.png`` in ``out_dir``
    when given. ``split`` ``val``/``train``: the validation chips the checkpoint
    lists (``meta.val_files``); a checkpoint without that list (older ones,
    the bundled model) gets its split rebuilt from ``val_fraction`` and ``seed``,
    which default to its recipe's and are refused when the list exists.
    The result's ``split_source`` says which.
    """
    from mscn_geo.device import autocast_dtype, resolve_device
    from mscn_geo.models import load_checkpoint

    loaded = load_checkpoint(model_path)
    meta = loaded.meta
    recipe = meta.recipe or {}
    if meta.val_files and (val_fraction is not None or seed is not None):
        raise OptionError(
            "the model lists its validation chips: val_fraction and seed apply only to "
            "models without that list"
        )
    val_fraction = val_fraction if val_fraction is not None else recipe.get("val_fraction", 0.2)
    seed = seed if seed is not None else recipe.get("seed", 0)
    ds = load_labelled_folder(
        Path(data_dir),
        meta.class_names,
        meta.tile_size,
        meta.in_chans,
        split,
        val_fraction,
        seed,
        val_files=meta.val_files,
        scaling=meta.scene_scaling(),
    )
    ds.transform = eval_transform(meta.mean, meta.std)
    dev = resolve_device(device)
    model = loaded.model.to(dev)
    loader = DataLoader(ds, batch_size=batch_size, num_workers=0)
    probs, labels = predict_dataset(model, ds, dev, autocast_dtype(dev, amp), loader, tta=tta)
    result = classification_metrics(probs.argmax(1), labels, meta.class_names)
    if split == "all":
        source = "every chip of the folder"
    elif meta.val_files:
        source = "the validation chips listed in the checkpoint"
    else:
        source = f"stratified split rebuilt (val_fraction {val_fraction:g}, seed {seed})"
    result.update(model=loaded.label, data=str(data_dir), split=split, split_source=source, tta=tta)
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        result["outputs"] = {
            "confusion_csv": str(write_confusion_csv(out_dir / "confusion_matrix.csv", result)),
            "confusion_png": str(plot_confusion(out_dir / "confusion_matrix.png", result)),
        }
    return result


def write_confusion_csv(path: Path, result: dict[str, Any]) -> Path:
    with atomic_file(path) as tmp, tmp.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["true \\ predicted", *result["classes"]])
        for name, row in zip(result["classes"], result["confusion_matrix"], strict=True):
            w.writerow([name, *row])
    return path


def plot_confusion(path: Path, result: dict[str, Any]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    cm = np.asarray(result["confusion_matrix"], dtype=float)
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    classes = result["classes"]
    size = max(5.0, 0.45 * len(classes) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes, rotation=90)
    ax.set_yticks(range(len(classes)), classes)
    for i in range(len(classes)):
        for j in range(len(classes)):
            if cm[i, j]:
                ax.text(
                    j,
                    i,
                    int(cm[i, j]),
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if norm[i, j] > 0.5 else "black",
                )
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"OA {result['overall_accuracy']:.3f}, kappa {result['kappa']:.3f}")
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return path
