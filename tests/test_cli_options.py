"""One source for options: help and defaults from the library's fields; flags in CLI errors."""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import pytest
import typer
import typer.main
from mscn_geo_cli import options as opt
from mscn_geo_cli.app import App
from mscn_geo_cli.errors import cli_message
from mscn_geo_cli.main import main
from typer.testing import CliRunner

from mscn_geo.errors import OptionError
from mscn_geo.fields import option

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Toy:
    batch_size: int = option(16, help="Tiles per forward pass.")
    pad: bool = option(True, help="Pad a scene smaller than one tile.")
    out_dir: Path = option(default_factory=lambda: Path("."), help="Output folder.")
    epochs: int = option(300, help="Epochs.")
    device: str = option("auto", help="Device.")
    scale: str | None = option(None, help="MIN,MAX.")
    bands: str | None = option(None, help="Bands.")
    overwrite: bool = option(False, help="Replace.")


BATCH = opt.from_field(Toy, "batch_size", min=1)
PAD = opt.from_field(Toy, "pad", "--pad/--no-pad")
OUT = opt.from_field(Toy, "out_dir", "--out", "-o")
EPOCHS = opt.from_field(Toy, "epochs", given_only=True)
DEVICE, SCALE, BANDS, OVERWRITE = (
    opt.from_field(Toy, name) for name in ("device", "scale", "bands", "overwrite")
)


def _toy_app() -> tuple[App, list]:
    app = App(add_completion=False, rich_markup_mode=None)
    built = []

    @app.command()
    def one(
        ctx: typer.Context,
        scenes: Annotated[list[str], typer.Argument(help="Scenes.", show_default=False)],
        batch_size: int = BATCH,
        pad: bool = PAD,
        out_dir: Path = OUT,
        epochs: int | None = EPOCHS,
        device: str = DEVICE,
        scale: str | None = SCALE,
        bands: str | None = BANDS,
        overwrite: bool = OVERWRITE,
    ) -> None:
        given = {k: v for k, v in ctx.params.items() if k != "epochs"}
        built.append((opt.dataclass_from(Toy, given), epochs))

    @app.command()
    def two(ctx: typer.Context, batch_size: int = BATCH) -> None:  # the same option object
        built.append(opt.dataclass_from(Toy, ctx.params))

    return app, built


def test_option_defaults_and_help_come_from_the_field() -> None:
    app, built = _toy_app()
    runner = CliRunner()
    result = runner.invoke(app, ["one", "a.tif", "--no-pad", "-o", "x"])
    assert result.exit_code == 0, result.output
    toy, epochs = built[-1]
    assert toy == Toy(batch_size=16, pad=False, out_dir=Path("x"))
    assert epochs is None  # given_only: None unless given
    assert runner.invoke(app, ["two", "--batch-size", "3"]).exit_code == 0
    assert built[-1] == Toy(batch_size=3)
    assert runner.invoke(app, ["two", "--batch-size", "0"]).exit_code == 2  # min=1 kept

    help_text = runner.invoke(app, ["one", "--help"], terminal_width=100).output
    assert "Tiles per forward pass.  [default: 16; x>=1]" in help_text
    assert "--batch-size INTEGER" in help_text and "-o, --out PATH" in help_text
    assert re.search(r"--epochs INTEGER +Epochs\.  \[default: 300\]", help_text)
    assert "--pad / --no-pad" in help_text


def test_classify_help_reads_like_rasterio(capsys) -> None:
    assert main(["classify", "--help"]) == 0
    text = capsys.readouterr().out
    assert "Usage: mscn-geo classify [OPTIONS] SCENES..." in text
    assert "{" not in text.splitlines()[0]
    assert "<bool>" not in text and "<str>" not in text and "<int" not in text
    assert "  --overwrite " in text and "--amp / --no-amp" in text
    assert "  SCENES...  " in text  # the argument, listed by its usage name
    flat = " ".join(text.split())
    assert "Tiles per forward pass (default: 16 on CPU, 128 on CUDA)." in flat
    assert "default: 2, 8 when the model runs on CUDA, never more than the CPU count)" in flat
    assert "[default: None]" not in flat
    assert main(["evaluate", "--help"]) == 0
    flat = " ".join(capsys.readouterr().out.split())
    assert "Tiles per forward pass. [default: 32" in flat


def test_info_usage_names_its_argument(capsys) -> None:
    assert main(["info", "--help"]) == 0
    assert "Usage: mscn-geo info [OPTIONS] PATH\n" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("message", "fields", "expected"),
    [
        ("batch_size must be at least 1, got 0", "batch_size", "--batch-size must be at least 1"),
        ("a.gpkg exists; pass overwrite=True", "overwrite", "a.gpkg exists; pass --overwrite"),
        ("tile larger than the scene with pad=False", "pad", "with --no-pad"),
        ("device='cuda': no GPU (use device='cpu')", "device", "--device cuda: no GPU (use --devi"),
        ("scale=0,4095 needs MIN < MAX", "scale", "--scale 0,4095 needs MIN < MAX"),
        # a field's name inside a path or another name is left alone
        ("/data/bands/a.tif: bands 9 is out of range", "bands", "/data/bands/a.tif: --bands 9 is"),
        ("out_dir x is a file", ("out_dir",), "--out x is a file"),
    ],
)  # fmt: skip
def test_error_fields_become_flags(message, fields, expected) -> None:
    command = typer.main.get_command(_toy_app()[0]).commands["one"]
    text = cli_message(OptionError(message, field=fields), command)
    assert expected in text, text


def test_error_without_fields_is_unchanged() -> None:
    assert cli_message(OptionError("bands of the scene")) == "bands of the scene"


def test_cli_imports_no_private_names() -> None:
    """Public API only: no ``typer._click`` (typer>=0.12 is allowed) and no ``_name`` imports."""
    for path in (ROOT / "cli").glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module not in (None, "__future__"):
                assert not any(p.startswith("_") for p in node.module.split(".")), path
                assert not any(a.name.startswith("_") for a in node.names), path
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    assert not any(p.startswith("_") for p in alias.name.split(".")), path


def _run(capsys, *args: object) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_library_errors_name_fields_and_the_cli_prints_flags(make_scene, tiny_checkpoint, capsys):
    from mscn_geo.reader import open_scene

    scene = make_scene(64, 64)
    with pytest.raises(OptionError, match=r"^bands 9 is out of range: the scene has 3 band") as err:
        open_scene(scene, ["red", "green", "blue"], [9])
    assert err.value.fields == ("bands",) and "--" not in str(err.value)
    # The README's promise: the out-of-range message, not a band-count complaint.
    code, _, stderr = _run(capsys, "classify", scene, "-m", tiny_checkpoint, "--bands", "9")
    assert code == 2
    assert stderr == "mscn-geo: error: --bands 9 is out of range: the scene has 3 band(s)\n"
    code, _, stderr = _run(capsys, "classify", scene, "-m", tiny_checkpoint, "--device", "gpu")
    assert code == 2 and "error: --device must be auto, cpu or cuda[:N], got 'gpu'" in stderr


def test_json_warnings_on_stderr_and_absolute_paths(
    make_scene, tiny_checkpoint, tmp_path, capsys, monkeypatch
) -> None:
    make_scene(64, 64)
    monkeypatch.chdir(tmp_path)
    args = ("classify", "scene.tif", "-m", tiny_checkpoint, "-o", "out", "--tile-size", "32")
    code, stdout, stderr = _run(capsys, *args, "--json", "--device", "cpu")
    assert code == 0, stderr
    summary = json.loads(stdout)
    assert summary["warnings"] == ["tile size 32 px differs from the model's 64 px"]
    assert f"mscn-geo: warning: {summary['scene']}: tile size 32 px differs" in stderr
    assert summary["scene"] == str(tmp_path / "scene.tif")
    assert summary["outputs"]["gpkg"] == str(tmp_path / "out" / "scene.gpkg")
    assert summary["outputs"]["raster"] == str(tmp_path / "out" / "scene_classes.tif")
    assert all(Path(p).is_absolute() and Path(p).exists() for p in summary["outputs"].values())
