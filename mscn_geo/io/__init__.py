"""Output writers: the GeoPackage (tiles, landuse), the class raster, styles, atomic files."""

from mscn_geo.io.atomic import atomic_outputs, output_paths
from mscn_geo.io.raster import ClassRasterWriter
from mscn_geo.io.styles import class_colours, polygon_style_qml, raster_style_qml
from mscn_geo.io.vector import (
    GPKG_VERSION,
    read_layer_styles,
    write_landuse_layer,
    write_tiles_gpkg,
)

__all__ = [
    "GPKG_VERSION",
    "ClassRasterWriter",
    "atomic_outputs",
    "class_colours",
    "output_paths",
    "polygon_style_qml",
    "raster_style_qml",
    "read_layer_styles",
    "write_landuse_layer",
    "write_tiles_gpkg",
]
