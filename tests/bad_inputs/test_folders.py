"""Degenerate image folders for `cct train --dataset folder --data DIR` (and `cct eval` of such a run)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from compact_transformers.models import load_model

TRAIN = ["--epochs", "1", "--batch-size", "8", "--quiet", "--device", "cpu"]


def _empty(root: Path, make) -> None:
    root.mkdir()


def _files_only(root: Path, make) -> None:
    make.images(root, 4)  # images but no class folders


def _one_class(root: Path, make) -> None:
    make.images(root / "cat", 4)


def _one_class_and_an_empty_one(root: Path, make) -> None:
    make.images(root / "cat", 4)
    (root / "dog").mkdir()


def _one_class_and_one_of_text(root: Path, make) -> None:
    make.images(root / "cat", 4)
    (root / "dog").mkdir()
    (root / "dog" / "readme.txt").write_text("no images here")


def _all_unreadable(root: Path, make) -> None:
    for name in ("cat", "dog"):
        (root / name).mkdir(parents=True)
        for i in range(3):
            (root / name / f"{i}.png").write_text("not a png")


def _hidden_classes_only(root: Path, make) -> None:
    make.images(root / ".cache", 4)
    make.images(root / ".git", 4)


def _only_val(root: Path, make) -> None:
    make.images(root / "val" / "cat", 3)
    make.images(root / "val" / "dog", 3)


def _val_and_test_only(root: Path, make) -> None:
    for split in ("val", "test"):
        make.images(root / split / "cat", 3)
        make.images(root / split / "dog", 3)


def _empty_train(root: Path, make) -> None:
    (root / "train").mkdir(parents=True)
    make.images(root / "val" / "cat", 3)
    make.images(root / "val" / "dog", 3)


def _train_without_val(root: Path, make) -> None:
    make.images(root / "train" / "cat", 3)
    make.images(root / "train" / "dog", 3)


def _val_with_another_class(root: Path, make) -> None:
    for name in ("cat", "dog"):
        make.images(root / "train" / name, 3)
        make.images(root / "val" / name, 2)
    make.images(root / "val" / "owl", 2)


def _val_all_unreadable(root: Path, make) -> None:
    for name in ("cat", "dog"):
        make.images(root / "train" / name, 3)
        (root / "val" / name).mkdir(parents=True)
        (root / "val" / name / "0.png").write_bytes(b"")


def _one_image_per_class(root: Path, make) -> None:
    make.images(root / "cat", 1)
    make.images(root / "dog", 1)


def _class_of_one_image(root: Path, make) -> None:
    make.images(root / "cat", 4)
    make.images(root / "dog", 1)


# layout -> (writer, words the error must hold; "{root}" is the data folder)
REFUSED: dict[str, tuple[Callable, tuple[str, ...]]] = {
    "empty folder": (_empty, ("{root}", "class folders")),
    "images but no class folders": (_files_only, ("{root}", "class folders")),
    "one class": (_one_class, ("{root}", "two classes", "cat 4")),
    "one class and an empty class": (_one_class_and_an_empty_one, ("two classes", "dog 0")),
    "one class and a class of text files": (_one_class_and_one_of_text, ("two classes", "dog 0")),
    "all images unreadable": (_all_unreadable, ("{root}", "no readable images")),
    "only hidden folders": (_hidden_classes_only, ("{root}", "class folders")),
    "class folders only in val/": (_only_val, ("{root}", "no train/")),
    "val/ and test/ but no train/": (_val_and_test_only, ("{root}", "no train/")),
    "empty train/ next to val/": (_empty_train, ("train", "class folders")),
    "train/ without val/ or test/": (_train_without_val, ("{root}/val", "val_fraction")),
    "val/ with a class train/ lacks": (_val_with_another_class, ("owl", "train split")),
    "val/ of only unreadable images": (_val_all_unreadable, ("{root}", "validation split", "readable")),
    "one image per class": (_one_image_per_class, ("{root}", "validation", "cat 1")),
}


@pytest.mark.parametrize("layout", list(REFUSED))
def test_train_refuses_a_degenerate_folder(layout: str, tmp_path: Path, cct, make, check) -> None:
    writer, needles = REFUSED[layout]
    root = tmp_path / "data"
    writer(root, make)
    outcome = cct("train", "--dataset", "folder", "--data", root, *TRAIN, "--output", tmp_path / "runs")
    outcome.error_line("train", *(needle.format(root=root) for needle in needles))
    check.no_run_made(tmp_path / "runs")


def test_a_class_of_one_image_trains_without_it_in_val(tmp_path: Path, cct, make) -> None:
    """A class of one image cannot lend one to the validation split: it trains, and is said to be missing there."""
    root = tmp_path / "data"
    _class_of_one_image(root, make)
    outcome = cct("train", "--dataset", "folder", "--data", root, *TRAIN, "--output", tmp_path / "runs",
                  "--name", "run")  # fmt: skip
    outcome.succeeded()
    final = json.loads((tmp_path / "runs" / "run" / "final.json").read_text())
    assert final["val"]["count"] == 1  # 1 of cat's 4; dog's only image trains


@pytest.mark.parametrize("kind", ["an image file", "a text file", "a zip archive"])
def test_train_on_a_file_instead_of_a_folder(kind: str, tmp_path: Path, cct, make, check) -> None:
    if kind == "an image file":
        [path] = make.images(tmp_path, 1)
    elif kind == "a text file":
        path = tmp_path / "classes.txt"
        path.write_text("cat\ndog\n")
    else:
        path = tmp_path / "images.zip"
        path.write_bytes(b"PK\x05\x06" + b"\x00" * 18)
    outcome = cct("train", "--dataset", "folder", "--data", path, *TRAIN, "--output", tmp_path / "runs")
    outcome.error_line("train", str(path), "director")
    check.no_run_made(tmp_path / "runs")


def test_train_on_a_file_without_dataset_name(tmp_path: Path, cct, make, check) -> None:
    [path] = make.images(tmp_path, 1)
    outcome = cct("train", "--data", path, *TRAIN, "--output", tmp_path / "runs")
    outcome.error_line("train", str(path), "dataset")
    check.no_run_made(tmp_path / "runs")


def test_nested_junk_is_ignored(tmp_path: Path, cct, make) -> None:
    """Sub-folders of a class count as the class; hidden folders, non-image files, a folder named like an image,
    broken links and upper-case extensions do not break anything."""
    root = tmp_path / "data"
    make.images(root / "cat", 3)
    make.images(root / "cat" / "more" / "deeper", 2, prefix="deep")
    make.images(root / "dog", 4)
    (root / "dog" / "IMG_UPPER.PNG").write_bytes((root / "dog" / "img0.png").read_bytes())
    make.images(root / ".thumbnails" / "x", 3)
    (root / "cat" / "Thumbs.db").write_bytes(b"\x00" * 64)
    (root / "cat" / ".DS_Store").write_bytes(b"\x00" * 64)
    (root / "dog" / "folder.png").mkdir()
    (root / "dog" / "gone.png").symlink_to(tmp_path / "missing.png")
    (root / "notes.txt").write_text("a file next to the class folders")
    outcome = cct("train", "--dataset", "folder", "--data", root, *TRAIN, "--output", tmp_path / "runs",
                  "--name", "run")  # fmt: skip
    outcome.succeeded()
    run = tmp_path / "runs" / "run"
    final = json.loads((run / "final.json").read_text())
    assert load_model(run / "model").config.extra["classes"] == ["cat", "dog"]
    assert final["val"]["count"] == round(0.2 * 5) + round(0.2 * 5)  # cat 3 + 2 nested, dog 4 + the upper-case one


def test_huge_images_without_img_size_train_at_224(tmp_path: Path, cct, make) -> None:
    """5000x5000 images and no --img-size: the model is built for 224x224, not for 1.5 million tokens."""
    from PIL import Image

    root = tmp_path / "data"
    for name in ("cat", "dog"):
        (root / name).mkdir(parents=True)
        for i in range(2):
            Image.new("L", (5000, 5000), color=40 + 80 * i).save(root / name / f"{i}.png")
    outcome = cct("train", "--dataset", "folder", "--data", root, "--epochs", "1", "--batch-size", "2", "--quiet",
                  "--device", "cpu", "--model", "cct_2_3x2_32", "--output", tmp_path / "runs", "--name", "run")
    outcome.succeeded()
    model = load_model(tmp_path / "runs" / "run" / "model")
    assert model.config.img_size == (224, 224)
    assert yaml.safe_load((tmp_path / "runs" / "run" / "config.yaml").read_text())["img_size"] is None


# ---------------------------------------------------------------------------------------- eval of a folder run


def test_eval_of_a_folder_run_finds_its_data(folder_run: Path, tmp_path: Path, cct) -> None:
    outcome = cct("eval", folder_run, "--json", "--output", tmp_path / "eval")
    report = json.loads(outcome.succeeded().splitlines()[-1])
    final = json.loads((folder_run / "final.json").read_text())["val"]
    assert report["dataset"] == "folder" and report["count"] == final["count"] == 3
    assert report["top1"] == pytest.approx(final["top1"])


def test_eval_of_a_folder_run_whose_data_moved(folder_run: Path, folder_data: Path, tmp_path: Path, cct) -> None:
    run = tmp_path / "run"
    _copy(folder_run, run)
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["data"] = str(tmp_path / "moved")
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    outcome = cct("eval", run, "--output", tmp_path / "eval")
    outcome.error_line("eval", str(tmp_path / "moved"), "exist")
    assert not (tmp_path / "eval").exists()


def test_eval_of_a_folder_model_without_its_run_needs_data(folder_run: Path, tmp_path: Path, cct) -> None:
    outcome = cct("eval", folder_run / "model", "--output", tmp_path / "eval")
    outcome.error_line("eval", "--data")


def test_eval_on_a_folder_of_other_classes(folder_run: Path, tmp_path: Path, cct, make) -> None:
    other = make.folder(tmp_path / "other", ("x", "y"))
    outcome = cct("eval", folder_run, "--data", other, "--output", tmp_path / "eval")
    outcome.error_line("eval", "3 classes", "2")


def _copy(source: Path, target: Path) -> None:
    import shutil

    shutil.copytree(source, target)


def test_eval_on_a_folder_of_as_many_other_classes(folder_run: Path, tmp_path: Path, cct, make) -> None:
    """Three classes, but not the model's three: matching them by position would give a meaningless score."""
    other = make.folder(tmp_path / "other", ("x", "y", "z"))
    outcome = cct("eval", folder_run, "--data", other, "--output", tmp_path / "eval")
    outcome.error_line("eval", "'a'", "'x'")
    assert not (tmp_path / "eval").exists()


def test_flowers102_with_an_unreadable_validation_split(tmp_path: Path, cct, make, check) -> None:
    """Every validation image of Flowers-102 unreadable: refused before training, not a validation of 0 images."""
    scipy_io = pytest.importorskip("scipy.io", reason="reading .mat files needs scipy")
    import numpy as np

    root = tmp_path / "flowers"
    paths = make.images(root / "jpg", 4, size=(20, 20))
    for i, path in enumerate(paths, start=1):
        path.rename(root / "jpg" / f"image_{i:05d}.jpg")
    for i in (3, 4):
        (root / "jpg" / f"image_{i:05d}.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    scipy_io.savemat(root / "imagelabels.mat", {"labels": np.array([[1, 2, 1, 2]], dtype=np.uint8)})
    scipy_io.savemat(root / "setid.mat", {"trnid": np.array([[1, 2]]), "valid": np.array([[3, 4]]),
                                          "tstid": np.array([[3, 4]])})  # fmt: skip
    outcome = cct("train", "--dataset", "flowers102", "--data", root, *TRAIN, "--img-size", "16",
                  "--output", tmp_path / "runs")  # fmt: skip
    outcome.error_line("train", "flowers102", "validation")
    check.no_run_made(tmp_path / "runs")


def test_eval_on_a_folder_whose_validation_split_is_empty(folder_run: Path, tmp_path: Path, cct, make) -> None:
    """One image per class: nothing is left to evaluate; said, not a score of 0 images."""
    data = make.folder(tmp_path / "tiny", ("a", "b", "c"), per_class=1)
    outcome = cct("eval", folder_run, "--data", data, "--output", tmp_path / "eval")
    outcome.error_line("eval", "val split", str(data), "nothing to evaluate")
    assert not (tmp_path / "eval").exists()
