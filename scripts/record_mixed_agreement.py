"""Record a checkpoint's bf16 agreement with float32 on its validation chips.

``train`` does this itself when a run ends; this script adds the record to a
checkpoint written before that (the bundled model was recorded with it):

    python scripts/record_mixed_agreement.py mscn_geo/weights/mscn_resnet18_ucmerced.pt \
        ../shared/data/ucmerced

The validation chips are those the checkpoint lists, else its recipe's
stratified split (as ``mscn-geo evaluate --split val``). The weights are
rewritten unchanged; ``meta.metrics["mixed_precision"]`` is added.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    import torch
    from torch.utils.data import DataLoader

    from mscn_geo.device import resolve_device
    from mscn_geo.evaluate import eval_transform, load_labelled_folder
    from mscn_geo.mixed_agreement import record_mixed_agreement
    from mscn_geo.models import load_checkpoint

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("data", type=Path, help="the labelled folder the model was trained on")
    ap.add_argument("--device", default="auto")
    a = ap.parse_args()
    meta = load_checkpoint(a.checkpoint).meta
    recipe = meta.recipe or {}
    ds = load_labelled_folder(
        a.data,
        meta.class_names,
        meta.tile_size,
        meta.in_chans,
        "val",
        recipe.get("val_fraction", 0.2),
        recipe.get("seed", 0),
        val_files=meta.val_files,
        scaling=meta.scene_scaling(),
    )
    ds.transform = eval_transform(meta.mean, meta.std)
    batches = (x for x, _ in DataLoader(ds, batch_size=32))
    torch.manual_seed(0)
    mixed = record_mixed_agreement(a.checkpoint, batches, resolve_device(a.device))
    print(json.dumps(mixed.to_dict() if mixed else None))


if __name__ == "__main__":
    main()
