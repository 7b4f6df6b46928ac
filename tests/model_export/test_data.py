"""ImageFolder loading: the split, corrupt files, and every bad-input error with its whole message."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from model_card import Preprocessing
from model_export.cli import main
from model_export.data import (
    DatasetError,
    SkippedFileWarning,
    create_eval_transform,
    load_dataset_split,
    load_split,
    save_split,
    scan_image_folder,
)


def _tree(root: Path, counts: dict[str, int]) -> Path:
    rng = np.random.default_rng(0)
    for name, count in counts.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            Image.fromarray(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)).save(root / name / f"{i}.png")
    return root


def test_corrupt_and_non_image_files_are_skipped_and_counted(tmp_path: Path) -> None:
    root = _tree(tmp_path / "data", {"cats": 5, "dogs": 5})
    (root / "cats" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    (root / "dogs" / "notes.txt").write_text("not an image")
    good = (root / "dogs" / "0.png").read_bytes()
    (root / "dogs" / "truncated.png").write_bytes(good[: len(good) // 2])
    with pytest.warns(SkippedFileWarning) as warned:
        split = load_dataset_split(root, val_ratio=0.2, seed=0)
    assert len(warned) == 3
    assert split.skipped_files == 3
    assert len(split.train) + len(split.val) == 10
    assert {p.name for p, _ in split.train + split.val}.isdisjoint(
        {"broken.jpg", "notes.txt", "truncated.png"}
    )
    messages = sorted(str(w.message) for w in warned)
    assert messages[1] == f"skipping {root / 'dogs' / 'notes.txt'}: not an image file extension (.txt)"


def test_stratified_split_is_seeded_and_saved(tmp_path: Path) -> None:
    root = _tree(tmp_path / "data", {"a": 10, "b": 20, "c": 5})
    first = load_dataset_split(root, val_ratio=0.2, seed=3)
    again = load_dataset_split(root, val_ratio=0.2, seed=3)
    other = load_dataset_split(root, val_ratio=0.2, seed=4)
    assert first.val == again.val and first.train == again.train
    assert first.val != other.val
    assert first.summary()["val_per_class"] == {"a": 2, "b": 4, "c": 1}
    assert set(first.train).isdisjoint(first.val)
    save_split(first, tmp_path / "split.json")
    restored = load_split(tmp_path / "split.json")
    assert (restored.train, restored.val, restored.classes) == (first.train, first.val, first.classes)
    assert json.loads((tmp_path / "split.json").read_text())["val"][0][0].count("/") == 1  # relative paths


def test_train_val_subfolders_are_used_as_given(tmp_path: Path) -> None:
    _tree(tmp_path / "data" / "train", {"cats": 4, "dogs": 3})
    _tree(tmp_path / "data" / "val", {"cats": 2, "dogs": 1})
    split = load_dataset_split(tmp_path / "data", val_ratio=0.5, seed=0)
    assert (len(split.train), len(split.val), split.classes) == (7, 3, ["cats", "dogs"])
    assert split.source["layout"] == "train/val folders"


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as info:
        load_dataset_split(tmp_path / "nope", 0.2, 0)
    assert str(info.value) == f"dataset folder {tmp_path / 'nope'} does not exist or is not a folder"


def test_fewer_than_two_classes(tmp_path: Path) -> None:
    root = _tree(tmp_path / "data", {"cats": 4})
    with pytest.raises(DatasetError) as info:
        load_dataset_split(root, 0.2, 0)
    assert str(info.value) == (
        f"dataset folder {root} has 1 class folder(s) ['cats']; "
        "need at least 2, one sub-folder of images per class"
    )


def test_empty_class(tmp_path: Path) -> None:
    root = _tree(tmp_path / "data", {"cats": 4, "dogs": 4})
    (root / "birds").mkdir()
    with pytest.raises(DatasetError) as info:
        load_dataset_split(root, 0.2, 0)
    assert str(info.value) == (
        f"class folder(s) ['birds'] in {root} have no readable images; remove them or add images"
    )


def test_class_too_small_to_split(tmp_path: Path) -> None:
    root = _tree(tmp_path / "data", {"cats": 4, "dogs": 1})
    with pytest.raises(DatasetError) as info:
        load_dataset_split(root, 0.2, 0)
    assert str(info.value) == (
        "class 'dogs' has 1 image(s), too few to split with --val-ratio 0.2: "
        "each class needs at least one training and one validation image"
    )


def test_bad_val_ratio(tmp_path: Path) -> None:
    root = _tree(tmp_path / "data", {"cats": 4, "dogs": 4})
    with pytest.raises(DatasetError) as info:
        load_dataset_split(root, 1.5, 0)
    assert str(info.value) == "--val-ratio must be between 0 and 1 (exclusive), got 1.5"


def test_val_tree_with_other_classes(tmp_path: Path) -> None:
    _tree(tmp_path / "data" / "train", {"cats": 2, "dogs": 2})
    _tree(tmp_path / "data" / "val", {"cats": 2, "foxes": 2})
    with pytest.raises(DatasetError) as info:
        load_dataset_split(tmp_path / "data", 0.2, 0)
    assert str(info.value) == (
        f"dataset folder {tmp_path / 'data' / 'val'} has classes ['cats', 'foxes'], "
        "expected the training classes ['cats', 'dogs']"
    )


def test_cli_reports_dataset_errors_without_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["train", "--data", str(tmp_path / "missing"), "--output-dir", str(tmp_path / "run")])
    assert code == 2
    assert capsys.readouterr().err == (
        "model-export train: error: dataset folder "
        f"{tmp_path / 'missing'} does not exist or is not a folder\n"
    )


def test_eval_transform_is_torchvision_resize_and_center_crop(photos: dict[str, Image.Image]) -> None:
    """The contract with the server: short side to resize_size, then the centre crop, uint8
    (ARCHITECTURE.md).
    """
    image = photos["chelsea"]  # 451 x 300
    pre = Preprocessing(
        resize_size=256, crop_size=224, interpolation="bilinear", mean=(0.5,) * 3, std=(0.5,) * 3
    )
    pixels = create_eval_transform(pre)(image)
    assert pixels.dtype.is_floating_point is False and tuple(pixels.shape) == (3, 224, 224)
    long_side = int(256 * 451 / 300)
    resized = np.asarray(image.resize((long_side, 256), Image.Resampling.BILINEAR))
    top, left = round((256 - 224) / 2), round((long_side - 224) / 2)
    expected = resized[top : top + 224, left : left + 224]
    assert np.array_equal(pixels.permute(1, 2, 0).numpy(), expected)


def test_skipped_scan_keeps_class_order(tmp_path: Path) -> None:
    root = _tree(tmp_path / "data", {"b": 2, "a": 2})
    shutil.copy(root / "a" / "0.png", root / "a" / "copy.PNG")
    scan = scan_image_folder(root)
    assert scan.classes == ["a", "b"] and scan.class_counts() == {"a": 3, "b": 2}
