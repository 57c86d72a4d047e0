"""``mscn-geo info``: what a checkpoint is, or what classify would do with a scene."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from mscn_geo_cli import options as opt
from mscn_geo_cli.app import app
from mscn_geo_cli.errors import cli_text

CHECKPOINT_SUFFIXES = (".pt", ".pth")


@app.command()
def info(
    ctx: typer.Context,
    path: Annotated[
        Path, typer.Argument(metavar="PATH", help="A checkpoint (.pt) or a GeoTIFF scene.")
    ],
    model: opt.ModelPath = None,
    tile_size: int | None = opt.TILE_SIZE,
    stride: int | None = opt.STRIDE,
    bands: str | None = opt.BANDS,
    scale: str | None = opt.SCALE,
    resample: bool = opt.RESAMPLE,
    pad: bool = opt.PAD,
    allow_no_crs: bool = opt.ALLOW_NO_CRS,
    json_out: opt.Json = False,
    debug: opt.Debug = False,
) -> None:
    """Describe a checkpoint (metadata) or a scene (what classify would do with it).

    For a scene, the options are those classify would get; nothing is classified
    and pixels are only sampled (overviews or masks), never read whole.
    """
    from mscn_geo.options import ClassifyOptions

    options = opt.dataclass_from(ClassifyOptions, ctx.params)
    from mscn_geo.errors import CheckpointError, InputError

    summary: dict[str, Any] | None = None
    if path.suffix.lower() in CHECKPOINT_SUFFIXES:
        summary = _checkpoint_summary(path)
    else:
        try:
            summary = _scene_summary(path, model, options)
            summary["warnings"] = [cli_text(w, ctx.command) for w in summary["warnings"]]
        except InputError as scene_error:
            try:  # a checkpoint without the usual extension?
                summary = _checkpoint_summary(path)
            except CheckpointError:
                raise scene_error from None
    if json_out:
        print(json.dumps(summary))
        return
    for key, value in summary.items():
        if value is None:
            value = "-"
        elif isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items()) or "-"
        elif isinstance(value, list):
            value = ", ".join(map(str, value)) or "-"
        print(f"{key:>20}: {value}")


def _checkpoint_summary(path: Path) -> dict[str, Any]:
    from mscn_geo.models.checkpoint import meta_from_dict, read_checkpoint

    payload = read_checkpoint(path)
    meta = meta_from_dict(payload.get("meta", {}))
    params = sum(int(t.numel()) for t in payload["state_dict"].values() if t.is_floating_point())
    return {
        "kind": "checkpoint",
        "path": str(path),
        "status": meta.status,
        "arch": payload["arch"],
        "arch_kwargs": payload.get("arch_kwargs", {}),
        "parameters": params,
        "classes": meta.class_names,
        "num_classes": meta.num_classes,
        "bands": meta.bands,
        "mean": meta.mean,
        "std": meta.std,
        "tile_size": meta.tile_size,
        "pixel_size_m": meta.pixel_size_m,
        # How scene values become 0..255 for this model (None: 8-bit used as it is).
        "scaling": meta.scaling,
        "scene_bands": meta.scene_bands,
        "validation_images": len(meta.val_files),
        "training_data": meta.training_data,
        "trained": meta.trained,
        "version": meta.version,
        "created": meta.created,
        "metrics": meta.metrics,
    }


def _scene_summary(path: Path, model: Path | None, options: Any) -> dict[str, Any]:
    from mscn_geo.models.checkpoint import BUNDLED_MODEL, meta_from_dict, read_checkpoint
    from mscn_geo.plan import estimate_nodata_tiles, plan_scene

    model_path = model or BUNDLED_MODEL
    meta = meta_from_dict(read_checkpoint(model_path).get("meta", {}))
    options.check()
    plan = plan_scene(path, meta, options)
    summary: dict[str, Any] = {"kind": "scene", **plan.to_dict()}
    skipped, estimated = estimate_nodata_tiles(plan.info, plan.grid)
    summary["nodata_tiles_skipped"] = skipped
    summary["nodata_tiles_estimated"] = estimated
    summary["tiles_classified"] = summary["tiles"] - skipped
    summary["skipped_area_px"] = skipped * plan.grid.tile**2  # an estimate when estimated
    summary["model"] = f"{model_path} ({meta.status})"
    summary["model_bands"] = meta.bands
    summary["model_pixel_size_m"] = meta.pixel_size_m
    warnings = summary.pop("warnings")
    summary["warnings"] = warnings
    return summary
