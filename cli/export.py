"""``mscn-geo export``: a checkpoint as ONNX (plain classifier or Deepness segmentor)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from mscn_geo_cli import options as opt
from mscn_geo_cli.app import app


@app.command()
def export(
    onnx: Annotated[
        Path,
        typer.Option(
            "--onnx", help="ONNX file to write (.onnx).", dir_okay=False, show_default=False
        ),
    ],
    model: Annotated[
        Path | None,
        typer.Argument(
            help="Model checkpoint (.pt). Default: the bundled model.",
            dir_okay=False,
            show_default=False,
        ),
    ] = None,
    deepness: Annotated[
        bool,
        typer.Option(
            "--deepness",
            help="Export for the QGIS plugin Deepness: a 'Segmentor' whose output spreads "
            "each tile's class probabilities over its pixels; input standardised by Deepness "
            "from the model's metadata.",
        ),
    ] = False,
    exporter: Annotated[
        str,
        typer.Option(
            "--exporter",
            help="torch exporter: dynamo (torch.export, recommended by torch) or torchscript "
            "(the legacy tracer: same graph, faster to export, deprecated by torch).",
        ),
    ] = "dynamo",
    overwrite: opt.Overwrite = False,
    json_out: opt.Json = False,
    debug: opt.Debug = False,
) -> None:
    """Export MODEL as ONNX with a dynamic batch axis and Deepness-style metadata.

    Plain export: input 'pixels' float32 (batch, bands, T, T) with values 0..255,
    normalised inside the graph; output 'probabilities' (batch, classes). The file
    is checked against PyTorch in onnxruntime before it is renamed into place.
    """
    from mscn_geo.onnx_export import export_onnx

    variant = "deepness" if deepness else "classifier"
    result = export_onnx(onnx, model, variant=variant, exporter=exporter, overwrite=overwrite)
    if json_out:
        summary = result.to_dict()
        summary.pop("metadata")
        print(json.dumps(summary), flush=True)
        return
    shape = ", ".join(map(str, result.input_shape))
    out_shape = ", ".join(map(str, result.output_shape))
    print(
        f"{result.path}: {result.variant} export of {result.model_label}, "
        f"{result.size_bytes / 2**20:.1f} MiB in {result.seconds:.1f} s\n"
        f"  input:  {result.input_name} float32 ({shape})"
        + (
            ", standardised as in its metadata"
            if result.variant == "deepness"
            else ", values 0..255"
        )
        + f"\n  output: probabilities float32 ({out_shape})\n"
        f"  onnxruntime vs PyTorch: max |dp| {result.max_abs_diff:.2g}",
        flush=True,
    )
