"""Exporting into a model repository: the next version number, staged then renamed into place."""

from __future__ import annotations

from pathlib import Path

import pytest

from model_export.repository import export_to_repository, next_version


def fake_export(folder: Path, version: str) -> None:
    """What export_model leaves: the files, with the version it was given."""
    assert folder.name.startswith(".export-")  # never a visible version folder while writing
    folder.mkdir(parents=True)
    (folder / "model.onnx").write_text(f"version {version}")
    (folder / "model.json").write_text("{}")


def test_versions_count_up_from_the_highest_folder(tmp_path: Path) -> None:
    assert export_to_repository(tmp_path, "cats", fake_export) == tmp_path / "cats" / "1"
    (tmp_path / "cats" / "7").mkdir()
    (tmp_path / "cats" / "notes").mkdir()
    assert next_version(tmp_path / "cats") == 8
    target = export_to_repository(tmp_path, "cats", fake_export)
    assert target == tmp_path / "cats" / "8"
    assert (target / "model.onnx").read_text() == "version 8"
    assert sorted(p.name for p in (tmp_path / "cats").iterdir()) == ["1", "7", "8", "notes"]


def test_a_failed_export_leaves_no_version_and_no_staging(tmp_path: Path) -> None:
    def failing(folder: Path, version: str) -> None:
        folder.mkdir(parents=True)
        (folder / "model.onnx").write_text("half")
        raise RuntimeError("parity check failed")

    with pytest.raises(RuntimeError, match="parity check failed"):
        export_to_repository(tmp_path, "cats", failing)
    assert list((tmp_path / "cats").iterdir()) == []


def test_a_name_that_cannot_be_a_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"--name '\.\./x' cannot be a model folder"):
        export_to_repository(tmp_path, "../x", fake_export)
