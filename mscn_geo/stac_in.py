"""A STAC Item as a scene: its visual asset, or the assets named as bands (``--assets``).

The Item is a local JSON file or a URL (``.json``/``.geojson``, or a STAC API
``.../items/<id>`` address); it is read with pystac. One asset is read as it
is (local or remote, see :mod:`mscn_geo.remote`). Several assets become the
bands of a VRT, in the order named: GDAL's ``buildvrt -separate`` written by
hand (rasterio has no VRT builder), only after checking that every asset is on
the same grid (CRS, transform, size). Outputs are named after the Item file.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

from mscn_geo.errors import InputError
from mscn_geo.remote import as_scene, is_remote, remote_access, scene_name, scene_stem

__all__ = ["is_stac_item", "parse_assets", "stac_source"]

_ITEM_SUFFIXES = (".json", ".geojson")
_RASTER_TYPES = ("image/tiff", "image/jp2", "application/x-hdf")
_COLOURS = {"red": "Red", "green": "Green", "blue": "Blue", "alpha": "Alpha"}


def is_stac_item(scene: Path | str) -> bool:
    """True for a ``.json``/``.geojson`` file or URL, or a STAC API ``/items/<id>`` URL."""
    name = scene_name(scene).lower()
    if name.endswith(_ITEM_SUFFIXES):
        return True
    return isinstance(scene, str) and is_remote(scene) and "/items/" in scene


def parse_assets(assets: str | Sequence[str] | None) -> list[str] | None:
    """``"B04,B03,B02"`` -> ``["B04", "B03", "B02"]``; ``None`` stays ``None``."""
    if assets is None:
        return None
    keys = assets.split(",") if isinstance(assets, str) else list(assets)
    keys = [k.strip() for k in keys if k.strip()]
    return keys or None


def _read_item(scene: Path | str) -> Any:
    import pystac

    try:
        item = pystac.Item.from_file(str(scene))
    except FileNotFoundError as exc:
        raise InputError(f"STAC Item not found: {scene}") from exc
    except Exception as exc:  # pystac/urllib/json raise many types for a bad Item
        first = " ".join(str(exc).split())[:160] or type(exc).__name__
        raise InputError(f"{scene} is not a readable STAC Item ({first})") from exc
    return item


def _is_raster(asset: Any) -> bool:
    media = (asset.media_type or "").lower()
    return media.startswith(_RASTER_TYPES) or not media


def _choose(item: Any, keys: list[str] | None) -> list[str]:
    available = ", ".join(sorted(item.assets)) or "none"
    if keys is not None:
        missing = [k for k in keys if k not in item.assets]
        if missing:
            raise InputError(
                f"STAC Item {item.id} has no asset {', '.join(missing)} (it has: {available})"
            )
        return keys
    if "visual" in item.assets:
        return ["visual"]
    visual = [k for k, a in item.assets.items() if "visual" in (a.roles or []) and _is_raster(a)]
    if visual:
        return visual[:1]
    raise InputError(
        f"STAC Item {item.id} has no visual asset; name the assets to use as bands with "
        f"assets (it has: {available})",
        field="assets",
    )


def _href(item: Any, key: str) -> Path | str:
    href = item.assets[key].get_absolute_href() or item.assets[key].href
    if href.startswith("file://"):
        href = href[len("file://") :]
    return as_scene(href)


def _gdal_path(source: Path | str) -> str:
    """The name GDAL opens ``source`` by, for a VRT's SourceFilename."""
    text = str(source)
    if text.lower().startswith(("http://", "https://")):
        return f"/vsicurl/{text}"
    if text.lower().startswith("s3://"):
        return f"/vsis3/{text[len('s3://') :]}"
    return text if is_remote(text) else str(Path(text).resolve())


@dataclass
class _Band:
    key: str
    source: Path | str
    index: int
    width: int
    height: int
    dtype: str
    nodata: float | None
    block: tuple[int, int]
    colour: str | None


def _grid(ds: Any) -> tuple[Any, tuple[float, ...], int, int]:
    return ds.crs, tuple(round(v, 9) for v in ds.transform[:6]), ds.width, ds.height


def _colour(asset: Any, key: str, band: int) -> str | None:
    bands = asset.extra_fields.get("eo:bands") or asset.extra_fields.get("bands") or []
    if band - 1 < len(bands):
        name = bands[band - 1].get("common_name") or bands[band - 1].get("eo:common_name")
        if name in _COLOURS:
            return _COLOURS[name]
    return _COLOURS.get(key.lower()) if band == 1 else None


def _bands(item: Any, keys: list[str]) -> tuple[list[_Band], Any]:
    """The bands of ``keys``' assets, in order; all on one grid (else InputError)."""
    import rasterio
    from rasterio.errors import RasterioError

    bands: list[_Band] = []
    grids: dict[str, Any] = {}
    first = None
    for key in keys:
        source = _href(item, key)
        try:
            with remote_access(source), rasterio.open(source) as ds:
                grids[key] = _grid(ds)
                if first is None:
                    first = ds.crs, ds.transform
                for b in range(1, ds.count + 1):
                    bands.append(
                        _Band(
                            key, source, b, ds.width, ds.height, ds.dtypes[b - 1],
                            ds.nodatavals[b - 1], ds.block_shapes[b - 1],
                            _colour(item.assets[key], key, b),
                        )
                    )  # fmt: skip
        except RasterioError as exc:
            raise InputError(f"STAC Item {item.id}: asset {key} ({source}) cannot be read") from exc
    if len(set(grids.values())) > 1:
        described = "; ".join(
            f"{k}: {w}x{h} px of {abs(t[0]):g}, {crs.to_string() if crs else 'no CRS'}"
            for k, (crs, t, w, h) in grids.items()
        )
        raise InputError(
            f"STAC Item {item.id}: the assets are on different grids ({described}); "
            "choose assets of one resolution"
        )
    return bands, first


def _write_vrt(path: Path, bands: list[_Band], crs: Any, transform: Any) -> None:
    from rasterio.dtypes import _gdal_typename

    width, height = bands[0].width, bands[0].height
    root = ET.Element("VRTDataset", rasterXSize=str(width), rasterYSize=str(height))
    if crs is not None:
        ET.SubElement(root, "SRS").text = crs.to_wkt()
    gt = transform.to_gdal()
    ET.SubElement(root, "GeoTransform").text = ", ".join(repr(float(v)) for v in gt)
    for n, band in enumerate(bands, start=1):
        element = ET.SubElement(
            root, "VRTRasterBand", dataType=_gdal_typename(band.dtype), band=str(n)
        )
        ET.SubElement(element, "Description").text = band.key
        if band.nodata is not None:
            ET.SubElement(element, "NoDataValue").text = repr(float(band.nodata))
        if band.colour:
            ET.SubElement(element, "ColorInterp").text = band.colour
        source = ET.SubElement(element, "SimpleSource")
        ET.SubElement(source, "SourceFilename", relativeToVRT="0").text = _gdal_path(band.source)
        ET.SubElement(source, "SourceBand").text = str(band.index)
        ET.SubElement(
            source,
            "SourceProperties",
            RasterXSize=str(width),
            RasterYSize=str(height),
            DataType=_gdal_typename(band.dtype),
            BlockXSize=str(band.block[1]),
            BlockYSize=str(band.block[0]),
        )
        window = {"xOff": "0", "yOff": "0", "xSize": str(width), "ySize": str(height)}
        ET.SubElement(source, "SrcRect", **window)
        ET.SubElement(source, "DstRect", **window)
        if band.nodata is not None:
            ET.SubElement(source, "NODATA").text = repr(float(band.nodata))
    ET.ElementTree(root).write(path, encoding="utf-8")


@contextlib.contextmanager
def stac_source(
    scene: Path | str, assets: str | Sequence[str] | None = None
) -> Iterator[Path | str]:
    """What to read for ``scene``: itself, or, for a STAC Item, its asset or a VRT of its assets.

    The VRT lives in a temporary folder for the duration of the ``with`` block.

    Raises:
        InputError: the Item cannot be read, lacks a named asset or a visual one,
            or its assets are on different grids.
        OptionError: ``assets`` given for a scene that is not a STAC Item.
    """
    keys = parse_assets(assets)
    if not is_stac_item(scene):
        if keys is not None:
            from mscn_geo.errors import OptionError

            raise OptionError(
                f"assets applies to STAC Items only; {scene} is not one", field="assets"
            )
        yield scene
        return
    item = _read_item(scene)
    chosen = _choose(item, keys)
    if len(chosen) == 1:
        yield _href(item, chosen[0])
        return
    bands, (crs, transform) = _bands(item, chosen)
    folder = Path(tempfile.mkdtemp(prefix="mscn-geo-stac-"))
    try:
        vrt = folder / f"{scene_stem(scene)}.vrt"
        _write_vrt(vrt, bands, crs, transform)
        remote = next((b.source for b in bands if is_remote(str(b.source))), None)
        with remote_access(remote) if remote is not None else contextlib.nullcontext():
            yield vrt
    finally:
        shutil.rmtree(folder, ignore_errors=True)
