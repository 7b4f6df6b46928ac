"""The real default model (EfficientNet-Lite0, ImageNet), exported once per test session."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


def ensure_default_model(base_dir: Path) -> Path:
    """Export with ``python -m model_export default`` into ``base_dir`` unless already there.

    ``IMGSERVE_TEST_MODEL_DIR`` may point at a folder that already holds model.onnx + model.json.
    Skips (with the reason) only when the export stage cannot be imported (no torch).
    """
    preset = os.environ.get("IMGSERVE_TEST_MODEL_DIR")
    if preset:
        path = Path(preset) / "model.onnx"
        if not path.is_file():
            pytest.fail(f"IMGSERVE_TEST_MODEL_DIR={preset} holds no model.onnx")
        return path
    try:
        import model_export.cli  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"the export stage cannot be imported ({exc}); install the `export` extra")
    out_dir = base_dir / "default_model"
    path = out_dir / "model.onnx"
    if not path.is_file():
        result = subprocess.run(
            [sys.executable, "-m", "model_export", "default", "--output-dir", str(out_dir)],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if result.returncode != 0:
            pytest.fail(
                f"model export failed ({result.returncode}):\n"
                f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
            )
    return path


@pytest.fixture(scope="session")
def default_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_default_model(tmp_path_factory.getbasetemp())
