"""Write an UNTRAINED placeholder as the bundled model, if there is none yet.

The bundled model (``mscn_geo/weights/mscn_resnet18_ucmerced.pt``) is replaced by
the trained one from the training work. Until then this random-weight
mscn_resnet18 with the 21 UC Merced class names lets ``mscn-geo classify`` run;
its metadata says ``trained=False`` and every report labels it
"UNTRAINED placeholder".

Usage: python scripts/make_placeholder_model.py [--force]
"""

from __future__ import annotations

import argparse

import torch

from mscn_geo.models import BUNDLED_MODEL, ModelMeta, create_model, save_checkpoint

UC_MERCED_CLASSES = sorted(
    [
        "agricultural", "airplane", "baseballdiamond", "beach", "buildings", "chaparral",
        "denseresidential", "forest", "freeway", "golfcourse", "harbor", "intersection",
        "mediumresidential", "mobilehomepark", "overpass", "parkinglot", "river", "runway",
        "sparseresidential", "storagetanks", "tenniscourt",
    ]
)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="replace an existing bundled model")
    args = parser.parse_args()
    if BUNDLED_MODEL.exists() and not args.force:
        print(f"{BUNDLED_MODEL} exists; left as it is")
        return
    torch.manual_seed(0)
    arch = "mscn_resnet18"
    model = create_model(arch, num_classes=len(UC_MERCED_CLASSES))
    meta = ModelMeta(
        class_names=UC_MERCED_CLASSES,
        tile_size=256,
        pixel_size_m=0.3,
        training_data="none: UNTRAINED placeholder",
        trained=False,
    )
    BUNDLED_MODEL.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(BUNDLED_MODEL, model, arch, meta, half=True)
    print(
        f"wrote UNTRAINED placeholder {BUNDLED_MODEL} ({BUNDLED_MODEL.stat().st_size / 1e6:.1f} MB)"
    )


if __name__ == "__main__":
    main()
