"""atomic_outputs: all outputs appear together or not at all."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from mscn_geo.errors import OutputError
from mscn_geo.io.atomic import atomic_file, atomic_outputs, output_paths, temporary_path


def _finals(folder: Path) -> list[Path]:
    return [folder / "scene.gpkg", folder / "scene_classes.tif"]


def _listing(folder: Path) -> list[str]:
    return sorted(os.listdir(folder))


def test_output_paths_names_every_output(tmp_path: Path) -> None:
    paths = output_paths(Path("/data/in/scene_01.tif"), tmp_path)
    assert paths == {
        "gpkg": tmp_path / "scene_01.gpkg",
        "raster": tmp_path / "scene_01_classes.tif",
        "aux": tmp_path / "scene_01_classes.tif.aux.xml",
        "qml": tmp_path / "scene_01_classes.qml",
        "areas": tmp_path / "scene_01_areas.csv",
    }
    with_picture = output_paths(Path("/data/in/scene_01.tif"), tmp_path, quicklook=True)
    assert with_picture == {**paths, "quicklook": tmp_path / "scene_01_quicklook.png"}


def test_temporary_names_are_hidden_keep_extension_and_map_sidecars(tmp_path: Path) -> None:
    pid = os.getpid()
    assert temporary_path(tmp_path / "scene.gpkg") == tmp_path / f".scene.{pid}.partial.gpkg"
    tif = temporary_path(tmp_path / "s_classes.tif")
    assert tif == tmp_path / f".s_classes.{pid}.partial.tif"
    # GDAL writes the sidecar of the temporary tif exactly where the aux final's temporary is.
    assert temporary_path(tmp_path / "s_classes.tif.aux.xml") == Path(f"{tif}.aux.xml")
    assert temporary_path(tmp_path / "s_classes.qml") == tif.with_suffix(".qml")


def test_success_renames_all_and_leaves_no_temporary(tmp_path: Path) -> None:
    finals = _finals(tmp_path)
    with atomic_outputs(finals) as temps:
        assert [t.parent for t in temps] == [tmp_path, tmp_path]
        assert all(t.name.startswith(".") and ".partial" in t.name for t in temps)
        assert [t.suffix for t in temps] == [".gpkg", ".tif"]
        for index, temp in enumerate(temps):
            temp.write_bytes(b"content %d" % index)
        # Nothing is visible under a final name before the block ends.
        assert not any(f.exists() for f in finals)
    assert _listing(tmp_path) == ["scene.gpkg", "scene_classes.tif"]
    assert finals[0].read_bytes() == b"content 0"
    assert finals[1].read_bytes() == b"content 1"


def test_unlisted_gdal_sidecars_follow_their_dataset(tmp_path: Path) -> None:
    finals = _finals(tmp_path)
    with atomic_outputs(finals) as temps:
        for temp in temps:
            temp.write_bytes(b"x")
        Path(f"{temps[1]}.aux.xml").write_text("<PAMDataset/>")
        temps[1].with_suffix(".qml").write_text("<qgis/>")
    assert _listing(tmp_path) == [
        "scene.gpkg",
        "scene_classes.qml",
        "scene_classes.tif",
        "scene_classes.tif.aux.xml",
    ]


def test_exception_leaves_no_final_and_no_temporary(tmp_path: Path) -> None:
    finals = [*_finals(tmp_path), tmp_path / "scene_classes.tif.aux.xml"]
    with pytest.raises(RuntimeError, match="boom"), atomic_outputs(finals) as temps:
        for temp in temps:
            temp.write_bytes(b"partial")
        # Side files GDAL and SQLite leave while a dataset is open.
        Path(f"{temps[0]}-journal").write_bytes(b"j")
        Path(f"{temps[1]}.ovr").write_bytes(b"o")
        temps[1].with_suffix(".qml").write_text("<qgis/>")
        raise RuntimeError("boom")
    assert _listing(tmp_path) == []


def test_existing_output_is_refused_and_kept(tmp_path: Path) -> None:
    finals = _finals(tmp_path)
    finals[1].write_bytes(b"old raster")
    entered = False
    with (
        pytest.raises(OutputError, match=r"scene_classes\.tif exists; use overwrite=True"),
        atomic_outputs(finals),
    ):
        entered = True
    assert not entered
    assert _listing(tmp_path) == ["scene_classes.tif"]
    assert finals[1].read_bytes() == b"old raster"


def test_existing_sidecar_alone_is_refused(tmp_path: Path) -> None:
    finals = _finals(tmp_path)
    (tmp_path / "scene_classes.tif.aux.xml").write_text("<PAMDataset/>")
    with pytest.raises(OutputError, match=r"aux\.xml exists"), atomic_outputs(finals):
        pass


def test_overwrite_replaces_and_drops_stale_sidecar(tmp_path: Path) -> None:
    finals = _finals(tmp_path)
    finals[0].write_bytes(b"old gpkg")
    finals[1].write_bytes(b"old raster")
    stale = tmp_path / "scene_classes.tif.aux.xml"
    stale.write_text("<PAMDataset>old categories</PAMDataset>")
    with atomic_outputs(finals, overwrite=True) as temps:
        temps[0].write_bytes(b"new gpkg")
        temps[1].write_bytes(b"new raster")
    assert finals[0].read_bytes() == b"new gpkg"
    assert finals[1].read_bytes() == b"new raster"
    assert _listing(tmp_path) == ["scene.gpkg", "scene_classes.tif"]


def test_failed_overwrite_keeps_old_outputs(tmp_path: Path) -> None:
    finals = _finals(tmp_path)
    finals[0].write_bytes(b"old gpkg")
    with pytest.raises(ValueError), atomic_outputs(finals, overwrite=True) as temps:
        temps[0].write_bytes(b"new gpkg")
        raise ValueError("model failed")
    assert _listing(tmp_path) == ["scene.gpkg"]
    assert finals[0].read_bytes() == b"old gpkg"


def test_missing_folder(tmp_path: Path) -> None:
    with (
        pytest.raises(OutputError, match="does not exist"),
        atomic_outputs([tmp_path / "nope" / "scene.gpkg"]),
    ):
        pass


def test_folder_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a folder")
    with (
        pytest.raises(OutputError, match="is not a folder"),
        atomic_outputs([tmp_path / "file" / "scene.gpkg"]),
    ):
        pass


def test_unwritable_folder(tmp_path: Path) -> None:
    """A real folder that refuses files (no mock of the check): chmod, or sysfs for root."""
    if os.geteuid() != 0:
        folder = tmp_path / "locked"
        folder.mkdir()
        folder.chmod(0o555)
    elif Path("/sys/kernel").is_dir():
        folder = Path("/sys/kernel")  # root passes os.access here, yet cannot create files
    else:
        pytest.skip("no folder here refuses root's writes")
    before = sorted(p.name for p in folder.iterdir())
    with (
        pytest.raises(OutputError, match=rf"^output folder {folder} is not writable \("),
        atomic_outputs(_finals(folder)),
    ):
        pytest.fail("the block must not run")
    assert sorted(p.name for p in folder.iterdir()) == before


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_disk_full_becomes_output_error_and_cleans_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    real_write_bytes = Path.write_bytes

    def write_bytes(self: Path, data: bytes) -> int:
        if self.suffix == ".tif":
            real_write_bytes(self, data[:3])  # a partial file, as a real full disk leaves
            raise OSError(code, os.strerror(code))
        return real_write_bytes(self, data)

    monkeypatch.setattr(Path, "write_bytes", write_bytes)
    with (
        pytest.raises(OutputError, match="disk full while writing") as caught,
        atomic_outputs(_finals(tmp_path)) as temps,
    ):
        temps[0].write_bytes(b"gpkg")
        temps[1].write_bytes(b"raster data")
    assert isinstance(caught.value.__cause__, OSError)
    assert caught.value.__cause__.errno == code
    assert _listing(tmp_path) == []


def test_gdal_style_disk_full_message_is_recognised(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match="disk full"), atomic_outputs(_finals(tmp_path)):
        raise RuntimeError("TIFFAppendToStrip: Write error: No space left on device")


def test_block_that_does_not_write_an_output_fails(tmp_path: Path) -> None:
    finals = _finals(tmp_path)
    with pytest.raises(OutputError, match="was not written"), atomic_outputs(finals) as temps:
        temps[0].write_bytes(b"only the gpkg")
    assert _listing(tmp_path) == []


def test_duplicate_finals_are_rejected(tmp_path: Path) -> None:
    with (
        pytest.raises(ValueError, match="duplicate"),
        atomic_outputs([tmp_path / "a.gpkg", tmp_path / "a.gpkg"]),
    ):
        pass


def test_atomic_file_replaces_on_success_and_keeps_the_old_file_on_error(tmp_path: Path) -> None:
    final = tmp_path / "model.pt"
    final.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_file(final) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".") and tmp.suffix == ".pt"
        tmp.write_bytes(b"half")
        raise RuntimeError("killed mid-write")
    assert final.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]
    with atomic_file(final) as tmp:
        tmp.write_bytes(b"new")
        assert final.read_bytes() == b"old"  # nothing visible before the block ends
    assert final.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]
