"""Output writers: the tiles GeoPackage, the class raster, their styles, atomic file handling."""

from mscn_geo.io.atomic import atomic_outputs, output_paths
from mscn_geo.io.raster import ClassRasterWriter
from mscn_geo.io.styles import class_colours, polygon_style_qml, raster_style_qml
from mscn_geo.io.vector import read_layer_styles, write_tiles_gpkg

__all__ = [
    "ClassRasterWriter",
    "atomic_outputs",
    "class_colours",
    "output_paths",
    "polygon_style_qml",
    "raster_style_qml",
    "read_layer_styles",
    "write_tiles_gpkg",
]
