"""Classify a scene: plan -> claim the outputs -> predict -> write -> summary.

Only the order of the steps lives here; each step is its own module
(:mod:`mscn_geo.plan`, :mod:`mscn_geo.predict`, :mod:`mscn_geo.outputs`,
:mod:`mscn_geo.resume`, :mod:`mscn_geo.io.atomic`).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from mscn_geo.backends import resolve_backend
from mscn_geo.background import InOrderWorker
from mscn_geo.device import amp_name
from mscn_geo.errors import OptionError, OutputError
from mscn_geo.io.atomic import claim_outputs, remove_stale_temporaries
from mscn_geo.map_writer import MapWriter, map_legend
from mscn_geo.models.checkpoint import LoadedModel
from mscn_geo.options import ClassifyOptions
from mscn_geo.outputs import SceneResult, tiles_frame
from mscn_geo.plan import ScenePlan, crs_name, plan_scene
from mscn_geo.predict import Predictor, ProgressCallback, predict_tiles
from mscn_geo.products import write_map_products
from mscn_geo.remote import as_scene, remote_access
from mscn_geo.resume import predict_resumable, run_journal
from mscn_geo.stac_in import stac_source
from mscn_geo.stac_out import build_stac_item, stac_item_path, write_stac_item

__all__ = ["classify_scene", "make_out_dir"]


def make_out_dir(out_dir: Path) -> Path:
    """Create the output folder (and its parents) when missing.

    Raises:
        OptionError: it exists and is not a folder.
        OutputError: it cannot be created.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise OptionError(f"out_dir {out_dir} exists and is not a folder", field="out_dir")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create the output folder {out_dir}: {exc.strerror}") from exc
    return out_dir


def classify_scene(
    scene: str | os.PathLike[str],
    model: LoadedModel,
    options: ClassifyOptions,
    progress: ProgressCallback | None = None,
    *,
    plan: ScenePlan | None = None,
    predictor: Predictor | None = None,
) -> SceneResult:
    """Classify every tile of ``scene`` and write its outputs.

    ``<scene>.gpkg`` (layers ``tiles`` and ``landuse``), ``<scene>_classes.tif``,
    ``<scene>_areas.csv``, with ``options.quicklook`` ``<scene>_quicklook.png``,
    with ``options.probabilities`` ``<scene>_probs.tif``
    (:mod:`mscn_geo.products`). With ``options.aoi`` only tiles touching the area
    of interest are classified and every output is nodata outside it.

    The rasters are written strip by strip while the model runs
    (:class:`~mscn_geo.map_writer.MapWriter`; resumed and Dask runs feed it
    their merged results afterwards). Outputs are written under temporary names
    and renamed when complete, so an error or interruption leaves no partial
    file (hidden temporaries that a killed run left behind are removed first).
    A scene that is entirely nodata is not an error: it gives a GeoPackage with
    no polygons, an all-255 raster and a warning. With ``options.resume``
    finished tiles are kept in a journal (:mod:`mscn_geo.resume`) and a run
    started again continues from it.

    Args:
        progress: called as ``progress(tiles_done, tiles_total)``.
        plan: the scene's :func:`~mscn_geo.plan.plan_scene` when the caller already made it.
        predictor: computes the per-tile results instead of
            :func:`~mscn_geo.predict.predict_tiles` (:mod:`mscn_geo.distributed`
            runs them on a Dask cluster); the outputs are written by the same code
            either way.

    Raises:
        InputError, OptionError, OutputError (see :mod:`mscn_geo.errors`).
    """
    options.check()
    start = time.perf_counter()
    scene = as_scene(scene)  # a URL stays a string (mscn_geo.remote)
    # A STAC Item is read through its asset(s); outputs are named after the Item.
    with stac_source(scene, options.assets) as source, remote_access(source):
        return _classify(scene, source, model, options, progress, plan, predictor, start)


def _classify(
    scene: Path | str,
    source: Path | str,
    model: LoadedModel,
    options: ClassifyOptions,
    progress: ProgressCallback | None,
    plan: ScenePlan | None,
    predictor: Predictor | None,
    start: float,
) -> SceneResult:
    from mscn_geo.io import atomic_outputs, output_paths, write_tiles_gpkg

    if plan is None:
        plan = plan_scene(source, model.meta, options)
    info, grid = plan.info, plan.grid
    warnings = list(plan.warnings)
    out_dir = make_out_dir(options.out_dir)
    paths = output_paths(
        scene, out_dir, quicklook=options.quicklook, probabilities=options.probabilities
    )
    if options.stac:
        paths["stac"] = stac_item_path(scene, out_dir)
    names = list(paths)
    meta = model.meta
    finals = list(paths.values())
    remove_stale_temporaries(out_dir)
    with (
        claim_outputs(finals),
        run_journal(scene, plan, model, options, finals) as journal,
        atomic_outputs(
            finals, overwrite=options.overwrite or bool(journal and journal.replaces_outputs)
        ) as temps,
    ):
        tmp = dict(zip(names, temps, strict=True))
        streamed = journal is None and predictor is None
        legend = map_legend(meta.class_names, options.min_confidence)
        with MapWriter(
            info,
            grid,
            meta.class_names,
            tmp["raster"],
            probabilities=tmp.get("probs"),
            weighting=options.overlap_weight,
            min_confidence=options.min_confidence,
            # The loop's masks are the scene's pixels unless tiles were resampled.
            tile_masks=streamed and info.read_tile is None,
            aoi=info.aoi,
        ) as maps:
            if streamed:
                # The rasters are written strip by strip while the model runs, on
                # their own thread: the loop goes on with the next batch meanwhile.
                with InOrderWorker() as writer:
                    result, device, amp = predict_tiles(
                        info, grid, model, options, progress, on_batch=writer.wrap(maps.add_record)
                    )
            else:
                if journal is None:
                    result, device, amp = predictor(info, grid, model, options, progress)
                else:
                    result, device, amp = predict_resumable(
                        info, grid, model, options, progress, journal
                    )
                maps.add_result(result)
        frame = tiles_frame(info, result, meta.class_names, options.min_confidence)
        if frame.empty:
            warnings.append("scene is entirely nodata: no tile was classified")
        values, classes, colours = (list(column) for column in zip(*legend, strict=True))
        k = meta.num_classes
        extra = list(zip(classes[k:], colours[k:], strict=True))  # uncertain
        write_tiles_gpkg(tmp["gpkg"], frame, meta.class_names, colours[:k], extra_classes=extra)
        products = write_map_products(
            tmp, info, maps.cell_map(), classes, colours, maps.areas, values
        )
        warnings.extend(products.warnings)
        if options.stac:  # last: it lists the outputs written
            written = {k: paths[k] for k in names if k != "stac" and tmp[k].exists()}
            item = build_stac_item(
                scene,
                info,
                meta,
                written,
                paths["stac"],
                model_label=model.label,
                min_confidence=options.min_confidence,
            )
            write_stac_item(tmp["stac"], item)
        if journal is not None:
            journal.mark_complete()
    classified = len(frame)
    counts = {name: 0 for _, name, _ in legend}
    for name in frame["class_name"]:
        counts[name] += 1
    from_journal = journal.taken if journal is not None else 0
    return SceneResult(
        scene=scene,
        crs=crs_name(info) or "none",
        bands=list(info.band_indexes),
        tiles=len(grid),
        classified=classified,
        skipped=len(grid) - classified,
        padded=int(frame["padded"].sum()) if classified else 0,
        per_class=counts,
        seconds=time.perf_counter() - start,
        device=str(device),
        amp=amp_name(amp),
        backend=resolve_backend(options.backend, device, amp, model),
        model_path=str(model.path) if model.path else "<memory>",
        model_label=model.label,
        trained=meta.trained,
        outputs={k: Path(v) for k, v in paths.items() if k not in ("aux", "qml")},
        warnings=warnings,
        from_journal=from_journal,
        computed=classified - (journal.taken_classified if journal is not None else 0),
        areas=products.areas.to_dict(),
        landuse_polygons=products.landuse_polygons,
    )
