"""Issue 5: bad input gives one line on stderr, exit 2, and leaves no file behind."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from mscn_geo_cli.main import main
from rasterio.errors import RasterioIOError
from rasterio.transform import from_origin

from mscn_geo.models import ModelMeta, create_model, save_checkpoint

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def cli(capsys, *args: object) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def write_scene(path: Path, width: int = 192, height: int = 64, **profile: object) -> Path:
    data = np.random.default_rng(0).integers(1, 255, (3, height, width)).astype(np.uint8)
    base = {
        "driver": "GTiff", "width": width, "height": height, "count": 3, "dtype": "uint8",
        "crs": "EPSG:32633", "transform": from_origin(500_000.0, 5e6, 0.5, 0.5),
        "tiled": True, "blockxsize": 64, "blockysize": 64, "compress": "deflate",
    }  # fmt: skip
    base.update(profile)
    with rasterio.open(path, "w", **base) as dst:
        dst.write(data)
    return path


def corrupt_last_block(path: Path, col: int = 2, row: int = 0) -> Path:
    """Garbage in the data of one block (default: the last tile's of a 192x64 scene).

    The header and the other tiles still read.
    """
    with rasterio.open(path) as ds:
        offset = int(ds.get_tag_item(f"BLOCK_OFFSET_{col}_{row}", "TIFF", bidx=1))
        size = int(ds.get_tag_item(f"BLOCK_SIZE_{col}_{row}", "TIFF", bidx=1))
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(bytes(range(256)) * (size // 256) + b"\xff" * (size % 256))
    return path


def assert_clean_failure(code: int, out: str, err: str, out_dir: Path, message: str) -> None:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("mscn-geo: error: ") and message in lines[0], lines[0]
    assert "Traceback" not in err and out == ""
    leftovers = sorted(p.name for p in out_dir.iterdir()) if out_dir.exists() else []
    assert leftovers == [], leftovers


# (name, make(tmp) -> (scene args, extra args), expected message part)
Case = tuple[str, Callable[[Path], tuple[list[object], list[object]]], str]


def _text(tmp: Path) -> tuple[list[object], list[object]]:
    (tmp / "notes.tif").write_text("this is not a GeoTIFF\n")
    return [tmp / "notes.tif"], []


def _empty(tmp: Path):
    (tmp / "empty.tif").write_bytes(b"")
    return [tmp / "empty.tif"], []


def _truncated(tmp: Path):
    good = write_scene(tmp / "good.tif", tiled=False, compress=None)
    (tmp / "trunc.tif").write_bytes(good.read_bytes()[:3000])
    return [tmp / "trunc.tif"], []


def _corrupt_blocks(tmp: Path):
    return [corrupt_last_block(write_scene(tmp / "blocks.tif"))], ["--workers", "1"]


def _missing(tmp: Path):
    return [tmp / "missing.tif"], []


def _directory(tmp: Path):
    (tmp / "adir.tif").mkdir()
    return [tmp / "adir.tif"], []


def _bad_band(tmp: Path):
    return [write_scene(tmp / "s.tif")], ["--bands", "1,2,9"]


def _band_names(tmp: Path):
    return [write_scene(tmp / "s.tif")], ["--bands", "red,green,blue"]


def _no_pad(tmp: Path):
    return [write_scene(tmp / "s.tif", width=40, height=40)], ["--no-pad"]


def _no_crs(tmp: Path):
    return [write_scene(tmp / "s.tif", crs=None)], []


def _bad_scale(tmp: Path):
    return [write_scene(tmp / "s.tif")], ["--scale", "100,10"]


CASES: list[Case] = [
    ("not a raster", _text, "is not a readable raster"),
    ("empty file", _empty, "scene is an empty file"),
    ("truncated", _truncated, "is corrupt or unreadable"),
    ("corrupt data block mid-run", _corrupt_blocks, "cannot read tile row 0 col 2"),
    ("missing", _missing, "scene not found"),
    # A folder argument means "its scenes" (batch use); one without scenes is an error.
    ("directory", _directory, "has no .tif, .tiff or .vrt scene"),
    ("unknown band", _bad_band, "--bands 9 is out of range: the scene has 3 band(s)"),
    ("band names", _band_names, "--bands must be 1-based band numbers like 1,2,3"),
    ("tile larger than scene, no padding", _no_pad, "with padding off (--no-pad)"),
    ("no crs", _no_crs, "has no CRS"),
    ("bad --scale", _bad_scale, "--scale MIN,MAX needs MIN < MAX"),
]


@pytest.mark.parametrize(("name", "make", "message"), CASES, ids=[c[0] for c in CASES])
def test_bad_scene(name, make, message, tiny_checkpoint, tmp_path, capsys) -> None:
    scenes, extra = make(tmp_path)
    out = tmp_path / "out"
    code, stdout, err = cli(
        capsys, "classify", *scenes, "-m", tiny_checkpoint, "-o", out, "--device", "cpu", *extra
    )
    assert_clean_failure(code, stdout, err, out, message)


def test_corrupt_block_fails_mid_run_not_at_open(tiny_model, tmp_path) -> None:
    """A tile in the middle of the scene is corrupt: the run gets there, then fails cleanly."""
    from mscn_geo.classify import classify_scene
    from mscn_geo.errors import InputError
    from mscn_geo.options import ClassifyOptions

    # 5 x 3 tiles of 64 px; the block of tile row 1, col 2 (the 8th of 15) is garbage.
    scene = corrupt_last_block(write_scene(tmp_path / "blocks.tif", 320, 192), col=2, row=1)
    out = tmp_path / "out"
    done: list[int] = []
    options = ClassifyOptions(out_dir=out, workers=0, batch_size=1, device="cpu")
    with pytest.raises(InputError) as err:
        classify_scene(scene, tiny_model, options, progress=lambda d, _total: done.append(d))
    assert str(err.value).startswith(f"{scene}: cannot read tile row 1 col 2 (corrupt file?): ")
    assert "IReadBlock failed" in str(err.value)  # GDAL's reason, not "see previous exception"
    assert max(done) == 7  # the 7 tiles before it were classified: it failed mid-run
    assert sorted(p.name for p in out.iterdir()) == []  # no output, no temporary


@pytest.mark.skipif(not IS_ROOT, reason="covered by test_unreadable_scene_real (not root)")
def test_unreadable_scene_mocked(monkeypatch, tiny_checkpoint, tmp_path, capsys) -> None:
    # Root reads everything: simulate the permission check and the open failing.
    scene = write_scene(tmp_path / "secret.tif")
    out = tmp_path / "out"
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, m: False if Path(p) == scene else real_access(p, m))
    code, stdout, err = cli(capsys, "classify", scene, "-m", tiny_checkpoint, "-o", out)
    assert_clean_failure(code, stdout, err, out, "scene is not readable (permission denied)")
    monkeypatch.setattr(os, "access", real_access)

    def denied(*args, **kwargs):
        raise RasterioIOError(f"{scene}: Permission denied")

    monkeypatch.setattr(rasterio, "open", denied)
    code, stdout, err = cli(capsys, "classify", scene, "-m", tiny_checkpoint, "-o", out)
    assert_clean_failure(code, stdout, err, out, "scene is not readable (permission denied)")


@pytest.mark.skipif(IS_ROOT, reason="root can read a chmod 000 file; see the mocked test")
def test_unreadable_scene_real(tiny_checkpoint, tmp_path, capsys) -> None:
    scene = write_scene(tmp_path / "secret.tif")
    scene.chmod(0)
    out = tmp_path / "out"
    code, stdout, err = cli(capsys, "classify", scene, "-m", tiny_checkpoint, "-o", out)
    assert_clean_failure(code, stdout, err, out, "scene is not readable (permission denied)")


def test_checkpoint_not_ours_corrupt_and_wrong_bands(tiny_checkpoint, tmp_path, capsys) -> None:
    scene = write_scene(tmp_path / "s.tif")
    out = tmp_path / "out"
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    pickled = tmp_path / "pickled.pt"
    torch.save(torch.nn.Linear(2, 2), pickled)  # a whole pickled module: not ours
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(tiny_checkpoint.read_bytes()[:5000])
    # Damage inside a tensor's data: torch.load reads it without a word (no CRC check).
    damaged = tmp_path / "damaged.pt"
    data = bytearray(tiny_checkpoint.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(255 - b for b in data[middle : middle + 64])
    damaged.write_bytes(bytes(data))
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint\n")
    torch.manual_seed(0)
    meta = ModelMeta(
        class_names=["a", "b"], bands=["red", "green", "blue", "nir"], mean=[0.5] * 4,
        std=[0.2] * 4, tile_size=64,
    )  # fmt: skip
    four = save_checkpoint(
        tmp_path / "four.pt",
        create_model("mscn_resnet18", num_classes=2, in_chans=4, dim=32),
        "mscn_resnet18",
        meta,
        arch_kwargs={"dim": 32},
    )
    for model, message in (
        (foreign, "is not an mscn-geo checkpoint"),
        (
            pickled,
            "is not an mscn-geo checkpoint: it holds Python objects "
            "(torch.nn.modules.linear.Linear) where a checkpoint has only tensors and plain values",
        ),
        (corrupt, "corrupt.pt is corrupt or truncated (File is not a zip file)"),
        (damaged, "damaged.pt is corrupt: its part"),
        (text, "notes.pt is not a checkpoint: not the zip archive torch.save writes"),
        (
            four,
            "scene has 3 band(s) and the model needs 4 (red, green, blue, nir); "
            "use a scene with 4 band(s) or choose some more than once with --bands LIST",
        ),
    ):
        code, stdout, err = cli(capsys, "classify", scene, "-m", model, "-o", out)
        assert_clean_failure(code, stdout, err, out, message)
        assert "\x1b" not in err and " ..." not in err and "previous exception" not in err


def test_output_exists_refused_unless_overwrite(tiny_checkpoint, tmp_path, capsys) -> None:
    scene = write_scene(tmp_path / "s.tif")
    out = tmp_path / "out"
    out.mkdir()
    (out / "s.gpkg").write_text("precious")
    code, _stdout, err = cli(capsys, "classify", scene, "-m", tiny_checkpoint, "-o", out)
    assert code == 2 and err.strip() == f"mscn-geo: error: {out / 's.gpkg'} exists; use --overwrite"
    assert sorted(p.name for p in out.iterdir()) == ["s.gpkg"]
    assert (out / "s.gpkg").read_text() == "precious"
    code, _, err = cli(capsys, "classify", scene, "-m", tiny_checkpoint, "-o", out, "--overwrite")
    assert code == 0, err
    assert (out / "s.gpkg").read_bytes()[:6] == b"SQLite"


def _folder_nobody_can_write() -> Path | None:
    """A real folder where even root cannot create a file (sysfs), or None."""
    for candidate in (Path("/sys/kernel"), Path("/sys")):
        try:
            (candidate / ".mscn-geo-test").touch()
        except OSError:
            if candidate.is_dir():
                return candidate
        else:  # pragma: no cover - a writable sysfs: do not leave the file
            (candidate / ".mscn-geo-test").unlink()
    return None


def test_output_folder_not_writable_for_real(tiny_checkpoint, tmp_path, capsys) -> None:
    """No mock of the check: a folder the OS refuses files in, whoever runs the test.

    Root passes ``os.access`` on such folders; the refusal must still come before any
    work, with the folder named (not "disk full" after classifying the whole scene).
    """
    scene = write_scene(tmp_path / "s.tif")
    if not IS_ROOT:
        out = tmp_path / "locked"
        out.mkdir()
        out.chmod(0o555)
    else:
        found = _folder_nobody_can_write()
        if found is None:
            pytest.skip("no folder here refuses root's writes (no sysfs)")
        out = found
    before = sorted(p.name for p in out.iterdir())
    code, stdout, err = cli(capsys, "classify", scene, "-m", tiny_checkpoint, "-o", out)
    assert code == 2 and stdout == "", err
    assert err.startswith(f"mscn-geo: error: output folder {out} is not writable (")
    assert len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in out.iterdir()) == before


def test_read_only_mount_is_refused(tiny_checkpoint, tmp_path) -> None:
    """A read-only file system, mounted in a private mount namespace (root only)."""
    if not IS_ROOT or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare to mount a read-only tmpfs privately")
    scene = write_scene(tmp_path / "s.tif")
    out = tmp_path / "ro"
    out.mkdir()
    script = (
        f"mount -t tmpfs -o ro tmpfs {out} || exit 77; "
        f"{sys.executable} -m mscn_geo_cli.main classify {scene} -m {tiny_checkpoint} -o {out}"
    )
    proc = subprocess.run(
        ["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=300
    )
    if proc.returncode == 77 or "Operation not permitted" in proc.stderr:
        pytest.skip(f"cannot mount here: {proc.stderr.strip()[:200]}")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr == (
        f"mscn-geo: error: output folder {out} is not writable (Read-only file system)\n"
    )
    assert list(out.iterdir()) == []  # the mount was private: nothing leaked here either


def test_disk_full_leaves_nothing(monkeypatch, tiny_checkpoint, tmp_path, capsys) -> None:
    import mscn_geo.io as mio

    scene = write_scene(tmp_path / "s.tif")
    out = tmp_path / "out"
    real = mio.write_tiles_gpkg

    def full(path, *args, **kwargs):
        real(path, *args, **kwargs)  # a real partial file exists when the disk fills
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(mio, "write_tiles_gpkg", full)
    code, stdout, err = cli(capsys, "classify", scene, "-m", tiny_checkpoint, "-o", out)
    assert_clean_failure(code, stdout, err, out, "disk full while writing")


def test_debug_shows_traceback(tiny_checkpoint, tmp_path, capsys) -> None:
    scene = corrupt_last_block(write_scene(tmp_path / "blocks.tif"))
    code, _, err = cli(capsys, "classify", scene, "-m", tiny_checkpoint, "-o", tmp_path / "o",
                       "--debug", "--workers", "0")  # fmt: skip
    assert (
        code == 2
        and "Traceback" in err
        and err.strip().splitlines()[-1].startswith("mscn-geo: error: ")
    )
