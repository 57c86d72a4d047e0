"""Your own classes end to end: polygons -> chips -> train --init bundled -> held-out accuracy.

Real imagery, labels that no training chip touches. A 0.3 m GeoTIFF scene is
mosaicked at run time (in a temporary folder; the images never enter the
repository) from UC Merced images of 5 classes that the bundled model was NOT
trained on (its validation split: ``val_fraction`` 0.2, seed 0, as its
recipe says), renamed to a user's legend (cropland, shrubland, housing,
woodland, water), so no head row is copied from the bundled model. Each class
is a field of 2 x ``--images`` images in the left half of the scene ("label
polygons") and another field of 2 x ``--images`` other images in the right
half ("held-out polygons"). The label polygons are written in EPSG:4326, the
scene is in UTM (they are reprojected, as for a user's layer).

Measured:

* ``chips`` over the label polygons (``--stride`` px, spatial split with
  ``--block-tiles``): chips/s of :func:`mscn_geo.chips.make_chips`;
* ``mscn-geo train CHIPS --init bundled`` with its CPU-sized default schedule:
  wall time (target: a 500-chip fine-tune in at most 10 minutes on this
  2-core machine), and the same run from scratch with the same schedule and
  budget (epochs, time budget, batch size, learning rate, augmentation; no
  backbone learning-rate scale or freezing, which only mean something for a
  fine-tune);
* overall accuracy on the held-out polygons: ``chips --val-fraction 0
  --stride 256`` over them (one chip per held-out image) and ``mscn-geo
  evaluate``, for the fine-tuned model, the scratch model, and the bundled
  model used as it is (its UC Merced class mapped to the user's class; any
  other of its 21 classes counts as wrong).

    python benchmarks/bench_chips_finetune.py --out benchmarks/results/chips_finetune_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import ROOT, finish, machine

SHARED = ROOT.parent / "shared" / "data" / "ucmerced"
#: UC Merced class -> the user's class name.
LEGEND = {
    "agricultural": "cropland",
    "chaparral": "shrubland",
    "denseresidential": "housing",
    "forest": "woodland",
    "river": "water",
}
PIXEL_M = 0.3
TILE = 256
CRS = "EPSG:32610"
# Origin on a multiple of the split-block size (2 tiles x 256 px x 0.3 m), so
# blocks line up with the fields.
ORIGIN = (153.6 * 3500, 153.6 * 27000)
#: Each class is a band of FIELD_ROWS image rows; across it, fields of so many
#: image columns, left to right, for the label polygons or the held-out ones.
FIELD_ROWS = 4
LAYOUT = (("labels", 2), ("heldout", 4), ("labels", 2))


def split_images(root: Path) -> dict[str, dict[str, list[Path]]]:
    """The bundled model's train/val images of the :data:`LEGEND` classes (its recipe's split)."""
    from mscn_geo.data import scan_image_folder, stratified_split
    from mscn_geo.models import BUNDLED_MODEL, read_checkpoint

    recipe = read_checkpoint(BUNDLED_MODEL)["meta"]["recipe"]
    classes, samples = scan_image_folder(root)
    labels = [s.label for s in samples]
    train, val = stratified_split(labels, recipe["val_fraction"], recipe["seed"])
    out: dict[str, dict[str, list[Path]]] = {n: {"train": [], "val": []} for n in LEGEND}
    for part, indices in (("train", train), ("val", val)):
        for i in indices:
            name = classes[samples[i].label]
            if name in out:
                out[name][part].append(samples[i].path)
    return {n: {k: sorted(v) for k, v in parts.items()} for n, parts in out.items()}


def build_scene(folder: Path, images: dict[str, dict[str, list[Path]]]) -> dict[str, Any]:
    """The scene and its two label layers (see module doc for the layout)."""
    import geopandas as gpd
    import numpy as np
    import rasterio
    import shapely
    from PIL import Image
    from rasterio.transform import from_origin

    rows = FIELD_ROWS
    width, height = sum(c for _, c in LAYOUT) * TILE, rows * len(images) * TILE
    data = np.zeros((3, height, width), dtype=np.uint8)
    transform = from_origin(*ORIGIN, PIXEL_M, PIXEL_M)
    layers: dict[str, list[tuple[str, Any]]] = {"labels": [], "heldout": []}
    used: dict[str, int] = {}
    for k, (name, parts) in enumerate(images.items()):
        col = 0
        taken = {"train": 0, "val": 0}
        for layer, cols in LAYOUT:
            part = "val" if layer == "heldout" else "train"
            n = rows * cols
            field = parts[part][taken[part] : taken[part] + n]
            if len(field) < n:
                raise SystemExit(f"{name}: not enough {part} images ({len(parts[part])})")
            taken[part] += n
            for j, path in enumerate(field):
                with Image.open(path) as im:
                    rgb = np.asarray(im.convert("RGB").resize((TILE, TILE), Image.BILINEAR))
                r, c = rows * k + j // cols, col + j % cols
                window = np.s_[:, r * TILE : (r + 1) * TILE, c * TILE : (c + 1) * TILE]
                data[window] = rgb.transpose(2, 0, 1)
            c0, c1, r0, r1 = col * TILE, (col + cols) * TILE, rows * k * TILE, rows * (k + 1) * TILE
            corners = [transform * (c, r) for c, r in ((c0, r0), (c1, r0), (c1, r1), (c0, r1))]
            layers[layer].append((LEGEND[name], shapely.Polygon(corners)))
            col += cols
        used[name] = taken["train"] + taken["val"]
    scene = folder / "scene.tif"
    profile = {
        "driver": "GTiff", "width": width, "height": height, "count": 3, "dtype": "uint8",
        "crs": CRS, "transform": transform, "tiled": True, "blockxsize": 256, "blockysize": 256,
        "compress": "deflate",
    }  # fmt: skip
    with rasterio.open(scene, "w", **profile) as dst:
        dst.write(data)
    out: dict[str, Any] = {"scene": scene, "width": width, "height": height}
    for layer, polygons in layers.items():
        frame = gpd.GeoDataFrame(
            {"landuse": [n for n, _ in polygons]}, geometry=[g for _, g in polygons], crs=CRS
        ).to_crs("EPSG:4326")
        out[layer] = folder / f"{layer}.gpkg"
        frame.to_file(out[layer])
    return out


def cli(*args: str) -> tuple[dict[str, Any], float, float]:
    """Run ``mscn-geo ARGS --json`` in a child process; (its JSON, wall s, its CPU s).

    CPU seconds (user + system of the child) do not grow with other processes'
    load the way wall time does: on an otherwise idle 2-core machine the wall
    time is about CPU seconds / 2.
    """
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "mscn_geo_cli.main", *args, "--json"],
        capture_output=True,
        text=True,
        check=False,
    )
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode != 0:
        raise SystemExit(f"mscn-geo {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1]), seconds, cpu


def zero_shot_accuracy(folder: Path) -> float:
    """The bundled model on the held-out chips, its class mapped through :data:`LEGEND`."""
    import torch

    from mscn_geo.data import load_image_folder
    from mscn_geo.evaluate import eval_transform, predict_dataset
    from mscn_geo.models import load_checkpoint

    model = load_checkpoint()
    ds = load_image_folder(folder, model.meta.tile_size)
    ds.transform = eval_transform(model.meta.mean, model.meta.std)
    probs, truth = predict_dataset(model.model, ds, torch.device("cpu"))
    names = [LEGEND.get(model.meta.class_names[int(p)]) for p in probs.argmax(1)]
    right = sum(n == ds.classes[int(t)] for n, t in zip(names, truth, strict=True))
    return right / len(truth)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stride", type=int, default=64, help="stride of the training chips")
    parser.add_argument("--block-tiles", type=int, default=2)
    parser.add_argument("--val-fraction", type=float, default=0.2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--skip-train", action="store_true", help="chips and zero-shot only")
    parser.add_argument("--skip-scratch", action="store_true", help="no from-scratch run")
    parser.add_argument("--train-args", default="", help="extra options for both train runs")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)

    import torch

    from mscn_geo.chips import ChipOptions, make_chips
    from mscn_geo.models import load_checkpoint
    from mscn_geo.options import ClassifyOptions

    if not SHARED.is_dir():
        raise SystemExit(f"skipped: UC Merced not found at {SHARED}")
    result: dict[str, Any] = {"machine": machine(torch.device("cpu"))}
    images = split_images(SHARED)
    n_label = FIELD_ROWS * sum(c for layer, c in LAYOUT if layer == "labels")
    n_held = FIELD_ROWS * sum(c for layer, c in LAYOUT if layer == "heldout")
    with tempfile.TemporaryDirectory(prefix="mscn-chips-bench-") as tmp:
        work = Path(tmp)
        built = build_scene(work, images)
        result["data"] = {
            "source": "UC Merced (shared/data/ucmerced), 0.3 m",
            "label_polygons": f"{n_label} images per class from the bundled model's train split",
            "heldout_polygons": f"{n_held} images per class from its validation split (unseen)",
            "legend": LEGEND,
            "scene_px": [built["width"], built["height"]],
            "pixel_size_m": PIXEL_M,
            "crs": CRS,
            "labels_crs": "EPSG:4326",
        }
        meta = load_checkpoint().meta
        options = ChipOptions(
            labels=built["labels"],
            class_field="landuse",
            out_dir=work / "chips",
            read=ClassifyOptions(stride=args.stride, workers=args.workers),
            block_tiles=args.block_tiles,
            val_fraction=args.val_fraction,
        )
        chips = make_chips([built["scene"]], meta, options)
        result["chips"] = {
            "chips": chips.chips,
            "counts": chips.counts,
            "windows_examined": chips.windows,
            "dropped_at_split": chips.dropped_at_split,
            "seconds": round(chips.seconds, 2),
            "chips_per_s": round(chips.chips_per_s, 1),
            "stride": args.stride,
            "block_tiles": args.block_tiles,
            "val_fraction": args.val_fraction,
        }
        heldout = ChipOptions(
            labels=built["heldout"],
            class_field="landuse",
            out_dir=work / "heldout",
            read=ClassifyOptions(stride=TILE, workers=args.workers),
            val_fraction=0.0,
            min_chips=0,
        )
        held = make_chips([built["scene"]], meta, heldout)
        result["heldout"] = {"chips": held.chips, "counts": held.counts}
        result["accuracy"] = {"bundled_as_is": round(zero_shot_accuracy(work / "heldout"), 4)}
        print(json.dumps(result["chips"]), flush=True)
        if not args.skip_train:
            from mscn_geo.training.config import FINE_TUNE_DEFAULTS

            extra = args.train_args.split()
            chips_dir = str(work / "chips")
            ft, ft_s, ft_cpu = cli("train", chips_dir, "--init", "bundled", "--device", "cpu",
                                   "--out", str(work / "ft.pt"), *extra)  # fmt: skip
            result["finetune"] = _train_summary(ft, ft_s, ft_cpu)
            result["finetune"]["target_met_wall"] = ft_s <= 600
            result["finetune"]["target_met_idle_estimate"] = ft_cpu / 2 <= 600
            models = [("finetuned", "ft.pt")]
            if not args.skip_scratch:
                same = {k: v for k, v in FINE_TUNE_DEFAULTS.items()
                        if k not in ("backbone_lr_scale", "freeze_epochs")}  # fmt: skip
                flags = {"mixup_alpha": "--mixup", "cutmix_alpha": "--cutmix",
                         "randaugment_magnitude": "--randaugment"}  # fmt: skip
                scratch_args = []
                for key, value in same.items():
                    scratch_args += [flags.get(key, "--" + key.replace("_", "-")), str(value)]
                scratch_out = str(work / "scratch.pt")
                sc, sc_s, sc_cpu = cli("train", chips_dir, "--device", "cpu", "--out",
                                       scratch_out, *scratch_args, *extra)  # fmt: skip
                result["scratch"] = {**_train_summary(sc, sc_s, sc_cpu), "options": scratch_args}
                models.append(("scratch", "scratch.pt"))
            for key, model in models:
                ev, _, _ = cli("evaluate", str(work / "heldout"), "--model", str(work / model),
                            "--device", "cpu")  # fmt: skip
                result["accuracy"][key] = round(ev["overall_accuracy"], 4)
                result["accuracy"][f"{key}_per_class_f1"] = {
                    k: round(v["f1"], 3) for k, v in ev["per_class"].items()
                }
    result["cpu_threads"] = torch.get_num_threads()
    result["note"] = (
        "2-core VM shared with other agents: see machine.load_before/after; "
        f"os.cpu_count()={os.cpu_count()}"
    )
    return finish(result, args.out)


def _train_summary(summary: dict[str, Any], seconds: float, cpu: float) -> dict[str, Any]:
    keep = ("epochs", "seconds", "best_val_overall_accuracy", "device", "train_chips", "val_chips")
    return {
        "wall_s": round(seconds, 1),
        "cpu_s": round(cpu, 1),
        "idle_2core_estimate_s": round(cpu / 2, 1),
        **{k: summary[k] for k in keep if k in summary},
    }


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
