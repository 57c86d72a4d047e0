"""mscn-geo: land-use maps from GeoTIFF scenes with an MSCN scene classifier.

Importing the package is cheap and needs neither rasterio nor GDAL: the
heavy modules (``mscn_geo.classify``, ``mscn_geo.io``) are imported on use.
"""

from mscn_geo.errors import (
    CheckpointError,
    DatasetError,
    InputError,
    Interrupted,
    MscnGeoError,
    OptionError,
    OutputError,
)

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "DatasetError",
    "InputError",
    "Interrupted",
    "MscnGeoError",
    "OptionError",
    "OutputError",
    "__version__",
]
