"""``--stac``: a STAC Item describing a scene's outputs, next to them as ``<scene>.stac.json``.

Built with pystac (STAC 1.1): geometry and bbox in EPSG:4326 (the scene's
footprint, reprojected with densified edges), the projection extension with
the scene's CRS, shape and transform, the classification extension with the
class values, names and colours (and 255 = nodata), and one asset per output
that exists: the GeoPackage, the class raster, the probabilities raster, the
quicklook and the areas table, with roles and media types. Asset hrefs are relative to the
Item, so the folder can be moved or uploaded as it is.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
from pathlib import Path
from typing import Any

import pystac
from pystac.extensions.classification import Classification, ClassificationExtension
from pystac.extensions.projection import ProjectionExtension

from mscn_geo.models.checkpoint import ModelMeta
from mscn_geo.reader import SceneInfo
from mscn_geo.remote import scene_stem

__all__ = ["ASSETS", "STAC_SUFFIX", "build_stac_item", "stac_item_path", "write_stac_item"]

STAC_SUFFIX = ".stac.json"
NODATA_CLASS = 255

#: Output key -> (asset key, media type, roles, title). Only existing outputs become assets.
ASSETS: dict[str, tuple[str, str, list[str], str]] = {
    "gpkg": (
        "tiles",
        pystac.MediaType.GEOPACKAGE,
        ["data"],
        "Tile classes and probabilities (GeoPackage)",
    ),
    "raster": ("classes", pystac.MediaType.COG, ["data"], "Class raster"),
    "probs": (
        "probabilities",
        pystac.MediaType.COG,
        ["data"],
        "Class probabilities, one band per class",
    ),
    "quicklook": ("quicklook", pystac.MediaType.PNG, ["overview", "visual"], "Quicklook"),
    "areas": ("areas", "text/csv", ["metadata"], "Area per class (CSV)"),
}
# Outputs that are class rasters or class-coded tables carry the class list.
_CLASSIFIED = ("gpkg", "raster")


def stac_item_path(scene: Path | str, out_dir: Path) -> Path:
    """``<out_dir>/<scene stem>.stac.json``."""
    return Path(out_dir) / f"{scene_stem(scene)}{STAC_SUFFIX}"


def _footprint(info: SceneInfo) -> dict[str, Any]:
    """The scene's outline in its own CRS, as a GeoJSON polygon (corners through the transform)."""
    t = info.transform
    corners = [(0, 0), (info.width, 0), (info.width, info.height), (0, info.height), (0, 0)]
    ring = [t * corner for corner in corners]
    return {"type": "Polygon", "coordinates": [[list(p) for p in ring]]}


def _bounds(geometry: dict[str, Any]) -> list[float]:
    xs = [p[0] for ring in geometry["coordinates"] for p in ring]
    ys = [p[1] for ring in geometry["coordinates"] for p in ring]
    return [min(xs), min(ys), max(xs), max(ys)]


def _wgs84(info: SceneInfo, footprint: dict[str, Any]) -> dict[str, Any]:
    """``footprint`` in EPSG:4326, edges densified so a curved outline stays inside."""
    import shapely
    from rasterio.warp import transform_geom
    from shapely.geometry import mapping, shape

    x0, y0, x1, y1 = _bounds(footprint)
    dense = shapely.segmentize(shape(footprint), max(x1 - x0, y1 - y0) / 32)
    geometry = transform_geom(info.crs, "EPSG:4326", mapping(dense), precision=7)
    if geometry["type"] == "Polygon":  # the closing point, exactly as GeoJSON wants it
        geometry["coordinates"] = [[list(p) for p in ring] for ring in geometry["coordinates"]]
    return geometry


def _classes(meta: ModelMeta, min_confidence: float | None) -> list[Classification]:
    from mscn_geo.map_writer import map_legend

    classes = [
        Classification.create(
            value=value,
            # Names are identifiers in classification v2 ([0-9A-Za-z-_]); the title keeps the text.
            name=re.sub(r"[^0-9A-Za-z_-]+", "_", name),
            title=name,
            color_hint="".join(f"{c:02X}" for c in colour),
        )
        for value, name, colour in map_legend(meta.class_names, min_confidence)
    ]
    classes.append(Classification.create(value=NODATA_CLASS, name="nodata", nodata=True))
    return classes


def _datetime(info: SceneInfo) -> dt.datetime:
    """The scene's TIFF date/time tag when it has one, else now (UTC)."""
    import rasterio

    try:
        with rasterio.open(info.path) as ds:
            stamp = ds.tags().get("TIFFTAG_DATETIME")
        if stamp:
            return dt.datetime.strptime(stamp, "%Y:%m:%d %H:%M:%S").replace(tzinfo=dt.timezone.utc)
    except (ValueError, rasterio.errors.RasterioError):
        pass
    return dt.datetime.now(dt.timezone.utc)


def build_stac_item(
    scene: Path | str,
    info: SceneInfo,
    meta: ModelMeta,
    outputs: dict[str, Path],
    item_path: Path,
    *,
    model_label: str = "",
    datetime: dt.datetime | None = None,
    min_confidence: float | None = None,
) -> pystac.Item:
    """A STAC Item of the ``outputs`` of ``scene`` (keys of :data:`ASSETS`), saved at ``item_path``.

    Args:
        info: the scene as classify read it (CRS, transform, size).
        outputs: final paths of the outputs written (the Item may be written
            before they are renamed into place: nothing is checked on disk).
        datetime: the Item's datetime; default: the scene's TIFF date tag, else now.
        min_confidence: classify's option: when set, the rasters also hold
            ``uncertain`` (254), listed with the classes.
    """
    footprint = _footprint(info)
    if info.crs is not None:
        geometry = _wgs84(info, footprint)
        bbox = _bounds(geometry)
    else:  # pixel-space outputs (--allow-no-crs): no place on Earth to give
        geometry, bbox = None, None
    now = dt.datetime.now(dt.timezone.utc)
    item = pystac.Item(
        id=scene_stem(scene),
        geometry=geometry,
        bbox=bbox,
        datetime=datetime or _datetime(info),
        properties={
            "title": f"Land use of {scene_stem(scene)} (mscn-geo)",
            "description": f"Tile classes of {scene} by {model_label or 'an MSCN model'}.",
            "created": pystac.utils.datetime_to_str(now),
            "mscn_geo:scene": str(scene),
            "mscn_geo:model": model_label,
            "mscn_geo:tile_size": meta.tile_size,
        },
    )
    item.set_self_href(str(Path(item_path).resolve()))
    proj = ProjectionExtension.ext(item, add_if_missing=True)
    epsg = info.crs.to_epsg() if info.crs is not None else None
    proj.apply(
        code=f"EPSG:{epsg}" if epsg else None,
        wkt2=info.crs.to_wkt() if info.crs is not None and not epsg else None,
        shape=[info.height, info.width],
        transform=list(info.transform)[:6],
        bbox=_bounds(footprint),
    )
    ClassificationExtension.add_to(item)
    for key, (asset_key, media_type, roles, title) in ASSETS.items():
        path = outputs.get(key)
        if path is None:
            continue
        asset = pystac.Asset(
            href=str(Path(path).resolve()), media_type=media_type, roles=roles, title=title
        )
        item.add_asset(asset_key, asset)
        if key in _CLASSIFIED:
            ClassificationExtension.ext(asset).classes = _classes(meta, min_confidence)
    item.make_asset_hrefs_relative()
    return item


def write_stac_item(path: str | os.PathLike[str], item: pystac.Item) -> Path:
    """Write ``item`` as JSON to ``path`` (no self link: the file may be moved)."""
    path = Path(path)
    path.write_text(json.dumps(item.to_dict(include_self_link=False), indent=2) + "\n")
    return path
