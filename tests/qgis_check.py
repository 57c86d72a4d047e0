"""Open mscn-geo outputs with QGIS and print what QGIS makes of them, as JSON.

Run with the system Python that has QGIS (not the project's venv)::

    QT_QPA_PLATFORM=offscreen /usr/bin/python3 tests/qgis_check.py \
        --gpkg out/scene.gpkg --layer tiles --layer landuse --raster out/scene_classes.tif

Prints one JSON object: ``{"qgis_version": ..., "vector": {...}, "vectors": {...},
"raster": {...}, "log": [...]}`` with, per layer, whether it is valid, its CRS
authid, feature count or size, the renderer type, and the classes (label, value,
colour) of its legend (``vector`` is the first ``--layer``, ``vectors`` every one
by name), and ``log``: every message QGIS logged meanwhile (GDAL warnings such as
an unsupported GeoPackage version land there). Only the standard library and
QGIS are imported so that it runs outside the venv.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any


def _colour(qcolor: Any) -> list[int]:
    return [qcolor.red(), qcolor.green(), qcolor.blue()]


def _vector(path: str, layer_name: str) -> dict[str, Any]:
    from qgis.core import QgsVectorLayer

    layer = QgsVectorLayer(f"{path}|layername={layer_name}", layer_name, "ogr")
    info: dict[str, Any] = {"valid": layer.isValid()}
    if not layer.isValid():
        return info
    renderer = layer.renderer()
    info |= {
        "crs": layer.crs().authid(),
        "feature_count": layer.featureCount(),
        "geometry_type": layer.geometryType(),
        "fields": [field.name() for field in layer.fields()],
        "renderer": renderer.type() if renderer else None,
    }
    if renderer is not None and renderer.type() == "categorizedSymbol":
        info["attribute"] = renderer.classAttribute()
        info["categories"] = [
            {
                "label": category.label(),
                "value": category.value(),
                "colour": _colour(category.symbol().color()),
            }
            for category in renderer.categories()
        ]
    styles = layer.listStylesInDatabase()
    # (count, ids, names, descriptions, error)
    info["styles_in_database"] = list(styles[2]) if styles and styles[0] >= 0 else []
    return info


def _raster(path: str) -> dict[str, Any]:
    from qgis.core import QgsRasterLayer

    layer = QgsRasterLayer(path, os.path.basename(path), "gdal")
    info: dict[str, Any] = {"valid": layer.isValid()}
    if not layer.isValid():
        return info
    provider = layer.dataProvider()
    renderer = layer.renderer()
    info |= {
        "crs": layer.crs().authid(),
        "width": layer.width(),
        "height": layer.height(),
        "extent": [
            layer.extent().xMinimum(),
            layer.extent().yMinimum(),
            layer.extent().xMaximum(),
            layer.extent().yMaximum(),
        ],
        "nodata": provider.sourceNoDataValue(1) if provider.sourceHasNoDataValue(1) else None,
        "renderer": renderer.type() if renderer else None,
        "provider_colour_table_labels": [item.label for item in provider.colorTable(1)],
    }
    if renderer is not None and renderer.type() == "paletted":
        info["classes"] = [
            {"label": entry.label, "value": int(entry.value), "colour": _colour(entry.color)}
            for entry in renderer.classes()
        ]
    if renderer is not None:
        info["legend"] = [label for label, _colour_ in renderer.legendSymbologyItems()]
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpkg", help="GeoPackage to open as a vector layer")
    parser.add_argument(
        "--layer", action="append", help="layer name in the GeoPackage (repeatable; tiles)"
    )
    parser.add_argument("--raster", help="class raster to open")
    args = parser.parse_args(argv)

    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from qgis.core import Qgis, QgsApplication

    app = QgsApplication([], False)
    app.initQgis()
    log: list[dict[str, Any]] = []

    def logged(message: str, tag: str, level: Any) -> None:
        log.append({"tag": tag, "level": int(level), "message": message})

    QgsApplication.messageLog().messageReceived.connect(logged)
    try:
        from osgeo import gdal

        result: dict[str, Any] = {
            "qgis_version": Qgis.QGIS_VERSION,
            "gdal_version": gdal.__version__,
        }
        if args.gpkg:
            layers = args.layer or ["tiles"]
            result["vectors"] = {name: _vector(args.gpkg, name) for name in layers}
            result["vector"] = result["vectors"][layers[0]]
        if args.raster:
            result["raster"] = _raster(args.raster)
        app.processEvents()  # deliver queued log messages
        result["log"] = log
        json.dump(result, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
    finally:
        app.exitQgis()
    return 0


if __name__ == "__main__":
    sys.exit(main())
