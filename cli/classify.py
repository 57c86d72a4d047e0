"""``mscn-geo classify``: scenes in, GeoPackage + class raster per scene out."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer
from mscn_geo_cli import options as opt
from mscn_geo_cli.app import app
from mscn_geo_cli.errors import cli_message, cli_text


@app.command()
def classify(
    ctx: typer.Context,
    scenes: Annotated[
        list[str],
        typer.Argument(
            metavar="SCENES",
            help="Scenes: files, glob patterns, folders (their .tif/.tiff/.vrt files), "
            "http(s):// URLs, s3:// or /vsi... paths (read by byte ranges), "
            "or - to read paths from stdin.",
            show_default=False,
        ),
    ],
    model: opt.ModelPath = None,
    out_dir: Path = opt.OUT_DIR,
    tile_size: int | None = opt.TILE_SIZE,
    stride: int | None = opt.STRIDE,
    overlap_weight: str = opt.OVERLAP_WEIGHT,
    tta: bool = opt.TTA,
    min_confidence: float | None = opt.MIN_CONFIDENCE,
    probabilities: bool = opt.PROBABILITIES,
    bands: str | None = opt.BANDS,
    scale: str | None = opt.SCALE,
    resample: bool = opt.RESAMPLE,
    pad: bool = opt.PAD,
    allow_no_crs: bool = opt.ALLOW_NO_CRS,
    batch_size: int | None = opt.BATCH_SIZE,
    device: str = opt.DEVICE,
    amp: bool | None = opt.AMP,
    backend: str = opt.BACKEND,
    workers: int | None = opt.WORKERS,
    overwrite: bool = opt.OVERWRITE,
    skip_existing: opt.SkipExisting = False,
    resume: bool = opt.RESUME,
    stac: bool = opt.STAC,
    assets: str | None = opt.ASSETS,
    aoi: Path | None = opt.AOI,
    quicklook: bool = opt.QUICKLOOK,
    keep_going: opt.KeepGoing = False,
    json_out: opt.Json = False,
    quiet: opt.Quiet = False,
    debug: opt.Debug = False,
    scheduler: Annotated[
        str | None,
        typer.Option(
            "--scheduler",
            metavar="ADDRESS",
            help="Run the model on the Dask cluster of this scheduler (e.g. tcp://host:8786); "
            "scenes and model must be at the same paths on the workers.",
        ),
    ] = None,
    cluster: Annotated[
        str | None,
        typer.Option(
            "--cluster",
            metavar="local[:N]",
            help="local[:N]: run on N Dask worker processes here (default: one per GPU, "
            "else per CPU core).",
        ),
    ] = None,
) -> int:
    """Classify each tile of each SCENE; write its land-use map to --out.

    Per scene: <scene>.gpkg (layers tiles and landuse), <scene>_classes.tif,
    <scene>_areas.csv and <scene>_quicklook.png.

    Scenes are done one after the other. The first error stops the run (outputs of
    scenes already done stay, the failing scene leaves nothing behind) unless
    --keep-going is given. With --json, one JSON line per scene on stdout.
    """
    from tqdm import tqdm

    from mscn_geo.batch import classify_scenes, expand_scenes, raise_on_signals
    from mscn_geo.errors import MscnGeoError
    from mscn_geo.models import load_checkpoint
    from mscn_geo.options import ClassifyOptions
    from mscn_geo.remote import scene_name

    options = opt.dataclass_from(ClassifyOptions, ctx.params)
    show_bar = not quiet and sys.stderr.isatty()

    @contextlib.contextmanager
    def progress_for(scene: Path | str) -> Iterator:
        with tqdm(
            total=0, desc=scene_name(scene), unit="tile", disable=not show_bar, file=sys.stderr,
            leave=False,
        ) as bar:  # fmt: skip

            def progress(done: int, total: int) -> None:
                bar.total = total
                bar.update(done - bar.n)

            yield progress

    failed = 0
    with raise_on_signals():
        options.check()
        paths = expand_scenes(scenes, sys.stdin if "-" in scenes else None)
        loaded = load_checkpoint(model)
        if scheduler is not None or cluster is not None:
            from mscn_geo.distributed import classify_scenes_on_cluster

            outcomes = classify_scenes_on_cluster(
                paths,
                loaded,
                options,
                scheduler=scheduler,
                cluster=cluster,
                keep_going=keep_going,
                skip_existing=skip_existing,
                progress_for=progress_for,
            )
        else:
            outcomes = classify_scenes(
                paths,
                loaded,
                options,
                keep_going=keep_going,
                skip_existing=skip_existing,
                progress_for=progress_for,
            )
        for outcome in outcomes:
            summary = outcome.to_dict()
            # The library's words (warnings, errors) in this command's flags.
            summary["warnings"] = [cli_text(w, ctx.command) for w in summary.get("warnings", [])]
            if outcome.error is not None:
                summary["error"] = " ".join(cli_message(outcome.error, ctx.command).split())
            if json_out:
                print(json.dumps(summary), flush=True)
            elif outcome.status == "ok":
                _print_summary(summary)
            elif outcome.status == "skipped":
                print(f"{outcome.scene}: skipped, outputs exist", flush=True)
            for warning in summary["warnings"]:  # on stderr, with --json too
                print(f"mscn-geo: warning: {summary['scene']}: {warning}", file=sys.stderr)
            if outcome.status == "error":
                failed += 1
                if keep_going:  # without --keep-going main() prints the error
                    print(f"mscn-geo: error: {summary['error']}", file=sys.stderr, flush=True)
    if failed:
        print(f"mscn-geo: error: {failed} of {len(paths)} scene(s) failed", file=sys.stderr)
        return MscnGeoError.exit_code
    return 0


def _top_areas(areas: dict | None, show: int = 4) -> str:
    """'forest 1.23 ha (45.6 %), ...' for the largest classes (pixels without a CRS)."""
    if not areas or not areas["valid_pixels"]:
        return "none"
    ranked = sorted(areas["classes"].items(), key=lambda kv: -kv[1]["share"])
    parts = [
        f"{name} {entry['ha']:.2f} ha ({100 * entry['share']:.1f} %)"
        if entry["ha"] is not None
        else f"{name} {100 * entry['share']:.1f} %"
        for name, entry in ranked[:show]
        if entry["pixels"]
    ]
    more = sum(1 for _, entry in ranked[show:] if entry["pixels"])
    return ", ".join(parts) + (f", {more} more" if more else "")


def _print_summary(summary: dict) -> None:
    model = summary["model"]
    counts = {k: v for k, v in summary["per_class"].items() if v}
    top = ", ".join(f"{k} {v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))
    taken = summary["from_journal"]
    journal = f", {taken} from the resume journal" if taken else ""
    lines = [
        f"{summary['scene']}: {summary['classified']} of {summary['tiles']} tiles classified "
        f"({summary['skipped']} nodata skipped, {summary['padded']} padded{journal}) in "
        f"{summary['seconds']:.1f} s, {summary['tiles_per_s']:.1f} tiles/s on {summary['device']}"
        f" (AMP {summary['amp']}, backend {summary['backend']})",
        f"  classes: {top or 'none'}",
        f"  areas:   {_top_areas(summary['areas'])}",
        f"  tiles:   {summary['outputs']['gpkg']} (layers tiles, landuse: "
        f"{summary['landuse_polygons']} polygons)",
        f"  raster:  {summary['outputs']['raster']}",
        f"  table:   {summary['outputs']['areas']}",
    ]
    if "probs" in summary["outputs"]:
        lines.append(f"  probs:   {summary['outputs']['probs']}")
    if "quicklook" in summary["outputs"]:
        lines.append(f"  picture: {summary['outputs']['quicklook']}")
    lines += [
        f"  model:   {model['label']}",
    ]
    if "stac" in summary["outputs"]:
        lines.append(f"  stac:    {summary['outputs']['stac']}")
    if not model["trained"]:
        lines.append("  NOTE: the model is an UNTRAINED placeholder: its classes are meaningless")
    print("\n".join(lines), flush=True)
