"""Export straight into a model repository: ``<repository>/<name>/<next version>/``.

The server (``IMGSERVE_MODEL_REPOSITORY``) serves ``<model>/<version>/model.onnx`` with
``<version>`` a positive integer. The export is written to a hidden folder beside the versions
and renamed into place when complete, so a server that rescans meanwhile never sees half a
model: a folder that is not a number is not a version.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from pathlib import Path

_VERSION_DIR = re.compile(r"[1-9][0-9]{0,17}")
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def next_version(model_dir: Path) -> int:
    """One more than the highest version folder in ``model_dir`` (1 for a new model)."""
    if not model_dir.is_dir():
        return 1
    versions = [int(p.name) for p in model_dir.iterdir() if p.is_dir() and _VERSION_DIR.fullmatch(p.name)]
    return max(versions, default=0) + 1


def export_to_repository(repository: Path, name: str, export: Callable[[Path, str], object]) -> Path:
    """Run ``export(folder, version)`` into a hidden folder, then rename it to the next version.

    Returns the version folder. The model's name must be a valid folder name for the server.
    """
    if not _MODEL_NAME.fullmatch(name):
        raise ValueError(
            f"--name {name!r} cannot be a model folder: use letters, digits, '.', '_' and '-' (up to 128)"
        )
    model_dir = repository / name
    model_dir.mkdir(parents=True, exist_ok=True)
    version = next_version(model_dir)
    staging = model_dir / f".export-{version}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        export(staging, str(version))
        target = model_dir / str(version)
        if target.exists():
            raise ValueError(f"{target} appeared during the export (another export?); export again")
        staging.rename(target)
        return target
    finally:
        shutil.rmtree(staging, ignore_errors=True)
