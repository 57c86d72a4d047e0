"""Output writers: the GeoPackage (tiles, landuse), the class raster, styles, atomic files.

Names are imported on first use (PEP 562), so ``mscn_geo.io.atomic`` alone (used
by checkpoints and training) does not import rasterio or geopandas.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "GPKG_VERSION": "mscn_geo.io.vector",
    "ClassRasterWriter": "mscn_geo.io.raster",
    "atomic_file": "mscn_geo.io.atomic",
    "atomic_outputs": "mscn_geo.io.atomic",
    "class_colours": "mscn_geo.io.styles",
    "output_paths": "mscn_geo.io.atomic",
    "polygon_style_qml": "mscn_geo.io.styles",
    "raster_style_qml": "mscn_geo.io.styles",
    "read_layer_styles": "mscn_geo.io.vector",
    "write_landuse_layer": "mscn_geo.io.vector",
    "write_tiles_gpkg": "mscn_geo.io.vector",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # looked up once
    return value
