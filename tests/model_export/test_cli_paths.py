"""The README's worked example, run as written from another working directory with relative paths."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from model_card import load_card

REPO_ROOT = Path(__file__).resolve().parents[2]
# Shorter than the README's run, and simple_cnn instead of Lite0 (whose two-stage fine-tuning
# and export test_train.py covers): what is under test here is that the commands, their
# relative paths and the data they name work from a fresh folder.
FAST_TRAIN = ["--arch", "simple_cnn", "--head-epochs", "0", "--epochs", "1", "--workers", "0"]
FAST_TRAIN += ["--no-tensorboard"]


def worked_example_commands() -> list[list[str]]:
    """The ``python -m model_export`` lines of the README's worked example, continuations joined."""
    readme = (REPO_ROOT / "README.md").read_text()
    block = re.search(r"Worked example that was run.*?```bash[^\n]*\n(.*?)```", readme, re.DOTALL)
    assert block, "README.md has no worked example block"
    text = block.group(1).replace("\\\n", " ")
    lines = [line.split("#")[0].strip() for line in text.splitlines()]
    return [shlex.split(line) for line in lines if line.startswith("python -m model_export")]


def run_cli(args: list[str], cwd: Path) -> str:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "model_export", "--threads", "1", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.slow
def test_worked_example_runs_from_another_folder_with_relative_paths(tmp_path: Path) -> None:
    commands = worked_example_commands()
    assert [c[3] for c in commands] == ["sample-data", "train", "evaluate"]
    assert "data/digits64" in commands[1] and commands[0][-1] == "data/digits64"
    for command in commands:
        args = command[3:]
        run_cli(args + FAST_TRAIN if args[0] == "train" else args, cwd=tmp_path)

    data = tmp_path / "data" / "digits64"
    split = json.loads((tmp_path / "runs" / "digits-lite0" / "split.json").read_text())
    assert split["root"] == str(data.resolve())
    assert split["val"][0][0].count("/") == 1  # stored relative to the root
    card = load_card(tmp_path / "models" / "digits-lite0" / "model.onnx")
    assert card.dataset["root"] == str(data.resolve()) and card.labels == [str(d) for d in range(10)]
    assert (card.preprocessing.crop_size, card.preprocessing.resize_size) == (64, 64)
    evaluation_dir = tmp_path / "models" / "digits-lite0" / "evaluation"
    evaluation = json.loads((evaluation_dir / "metrics.json").read_text())
    trained = json.loads((tmp_path / "runs" / "digits-lite0" / "metrics.json").read_text())
    assert evaluation["num_images"] == trained["num_images"] == 359
    assert evaluation["top1"] == trained["top1"] > 0.5


def test_sample_data_writes_the_digits_as_an_image_folder(tmp_path: Path) -> None:
    from sklearn.datasets import load_digits

    out = run_cli(["sample-data", "digits", "--output-dir", "digits", "--size", "24"], cwd=tmp_path)
    assert out.strip() == "wrote 1797 24x24 PNGs of digits to digits (one folder per class)"
    counts = {folder.name: len(list(folder.glob("*.png"))) for folder in (tmp_path / "digits").iterdir()}
    expected = np.bincount(load_digits().target)
    assert counts == {str(d): int(expected[d]) for d in range(10)}
    with Image.open(tmp_path / "digits" / "0" / "0000.png") as image:
        assert (image.size, image.mode) == ((24, 24), "RGB")
        pixels = np.asarray(image)
    # Dark ink on white; the 0's hole in the middle is paper.
    assert pixels.max() == 255 and pixels.min() < 40 and pixels[12, 12].min() > 200
