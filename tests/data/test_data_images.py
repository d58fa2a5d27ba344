"""Flowers-102 and ImageFolder readers (tiny image files written by the tests)."""

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from compact_transformers.data import DatasetError, FolderStream, detect_dataset, load_dataset
from compact_transformers.data.images import decode_image


def _flowers(root, fakes, labels, trnid, valid, tstid):
    from scipy.io import savemat

    for i in range(1, len(labels) + 1):
        # each image is a flat color that encodes its id, so the split contents can be checked
        color = np.array([i * 10, 255 - i * 10, 100], dtype=np.uint8)
        fakes.write_image(root / "jpg" / f"image_{i:05d}.jpg", np.broadcast_to(color, (24, 36, 3)).copy())
    savemat(root / "imagelabels.mat", {"labels": np.array([labels], dtype=np.uint8)})
    savemat(root / "setid.mat", {"trnid": np.array([trnid]), "valid": np.array([valid]), "tstid": np.array([tstid])})


def test_flowers102_splits(tmp_path, fakes):
    labels = [1, 2, 3, 1, 2, 3, 1, 2, 3]
    _flowers(tmp_path, fakes, labels, trnid=[1, 2, 3, 4], valid=[5, 6], tstid=[7, 8, 9])
    assert detect_dataset(tmp_path) == "flowers102"
    ds = load_dataset(path=tmp_path, image_size=16)
    assert ds.name == "flowers102" and ds.classes == ["1", "2", "3"]
    assert ds.train.images.shape == (4, 3, 16, 16) and len(ds.val) == 2 and len(ds.test) == 3
    assert ds.train.labels.tolist() == [0, 1, 2, 0] and ds.test.labels.tolist() == [0, 1, 2]
    # image id 5 is the first val image: its red channel is ~50 (jpeg is lossy)
    assert abs(int(ds.val.images[0, 0, 8, 8]) - 50) <= 6
    assert abs(int(ds.test.images[2, 0, 8, 8]) - 90) <= 6
    x = ds.train.images.double() / 255
    assert ds.mean[1] == pytest.approx(x[:, 1].mean().item(), rel=1e-9)


def test_flowers102_default_size_and_missing_mat(tmp_path, fakes):
    _flowers(tmp_path, fakes, [1, 2], trnid=[1], valid=[2], tstid=[2])
    ds = load_dataset("flowers102", tmp_path)
    assert ds.image_size == (224, 224) and ds.skipped == 0
    (tmp_path / "jpg" / "image_00002.jpg").write_bytes(b"\xff\xd8\xff garbage")
    ds = load_dataset("flowers102", tmp_path)
    assert ds.skipped == 2 and len(ds.val) == 0 and len(ds.test) == 0  # image 2 is in val and test
    assert ds.val.images.shape == (0, 3, 224, 224)
    (tmp_path / "setid.mat").unlink()
    with pytest.raises(DatasetError, match=f"flowers102: expected setid.mat in {tmp_path}"):
        load_dataset("flowers102", tmp_path)


def _folder(root, fakes, rng, counts, size=(10, 12), gray=False):
    for cls, n in counts.items():
        for j in range(n):
            shape = size if gray else (*size, 3)
            fakes.write_image(root / cls / f"{j}.png", rng.integers(0, 256, size=shape, dtype=np.uint8))


def test_folder_with_train_val_and_corrupt_image(tmp_path, fakes, rng, caplog):
    _folder(tmp_path / "train", fakes, rng, {"cat": 5, "dog": 4})
    _folder(tmp_path / "val", fakes, rng, {"cat": 2, "dog": 2})
    (tmp_path / "train" / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    good = (tmp_path / "train" / "cat" / "0.png").read_bytes()
    (tmp_path / "train" / "cat" / "truncated.png").write_bytes(good[: len(good) // 2])
    with caplog.at_level(logging.WARNING):
        ds = load_dataset(path=tmp_path)
    assert ds.name == "folder" and ds.classes == ["cat", "dog"]
    assert ds.skipped == 2
    assert "broken.png" in caplog.text and "truncated.png" in caplog.text
    assert ds.train.images.shape == (9, 3, 10, 12)  # the shared size of all images
    assert ds.train.labels.tolist() == [0] * 5 + [1] * 4 and len(ds.val) == 4 and ds.test is None
    from PIL import Image

    first = np.array(Image.open(tmp_path / "train" / "cat" / "0.png"))
    assert torch.equal(ds.train.images[0], torch.from_numpy(first).permute(2, 0, 1))


def test_folder_without_train_dir_is_split(tmp_path, fakes, rng):
    _folder(tmp_path, fakes, rng, {"a": 10, "b": 5}, gray=True)
    ds = load_dataset("folder", tmp_path, seed=1)
    assert ds.in_chans == 1  # all images are grayscale
    assert len(ds.val) == 3 and len(ds.train) == 12  # 20% of each class
    assert torch.bincount(ds.val.labels).tolist() == [2, 1]
    assert torch.equal(ds.val.labels, load_dataset("folder", tmp_path, seed=1).val.labels)


def test_folder_mixed_sizes_resized_and_test_split(tmp_path, fakes, rng):
    _folder(tmp_path / "train", fakes, rng, {"x": 4, "y": 4}, size=(10, 12))
    _folder(tmp_path / "train", fakes, rng, {"y": 1}, size=(30, 20))  # overwrites y/0.png with another size
    _folder(tmp_path / "test", fakes, rng, {"x": 2}, size=(10, 12))
    ds = load_dataset("folder", tmp_path, image_size=8, val_fraction=0.25)
    assert ds.image_size == (8, 8)
    assert len(ds.train) == 6 and len(ds.val) == 2 and len(ds.test) == 2
    default = load_dataset("folder", tmp_path)
    assert default.image_size == (224, 224)  # sizes differ: the default size
    assert default.test is None and len(default.val) == 2  # test/ is the validation split


def test_folder_streams_when_too_big(tmp_path, fakes, rng):
    _folder(tmp_path / "train", fakes, rng, {"a": 3, "b": 3})
    _folder(tmp_path / "val", fakes, rng, {"a": 1, "b": 1})
    eager = load_dataset(path=tmp_path)
    ds = load_dataset(path=tmp_path, max_memory_bytes=1000)
    assert ds.train.images is None and isinstance(ds.train_stream, FolderStream)
    assert ds.train.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert (ds.in_chans, ds.image_size) == (3, (10, 12))
    loader = torch.utils.data.DataLoader(ds.train_stream, batch_size=4)
    images, labels = zip(*loader)
    assert torch.equal(torch.cat(images), eager.train.images) and torch.cat(labels).tolist() == [0, 0, 0, 1, 1, 1]
    assert ds.mean == pytest.approx(eager.mean, rel=1e-9)  # all 6 images fit in the stats sample
    assert ds.train_stream.select([5, 0]).labels.tolist() == [1, 0]
    assert torch.equal(ds.val.images, eager.val.images)


def test_folder_errors(tmp_path, fakes, rng):
    with pytest.raises(DatasetError, match="class folders"):
        load_dataset("folder", tmp_path)
    _folder(tmp_path / "train", fakes, rng, {"a": 2})
    _folder(tmp_path / "val", fakes, rng, {"zebra": 1})
    with pytest.raises(DatasetError, match=r"\['zebra'\] that are not in the train split"):
        load_dataset("folder", tmp_path)


def test_16_bit_png_decodes_to_the_8_bit_range_not_all_white(tmp_path: Path) -> None:
    ramp = (np.arange(32 * 32).reshape(32, 32) * 64).astype(np.uint16)  # 0 .. 65472
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    with Image.open(tmp_path / "deep.png") as im:
        assert im.mode.startswith("I")  # Pillow keeps the 16 bits
        clipped = np.array(im.convert("L"))
    assert (clipped == 255).mean() > 0.9  # Pillow's plain conversion clips: the bug this guards against
    gray = decode_image(tmp_path / "deep.png", None, "L")[..., 0]
    np.testing.assert_array_equal(gray, np.rint(ramp / 257).astype(np.uint8))
    rgb = decode_image(tmp_path / "deep.png", None, "RGB")
    assert rgb.shape == (32, 32, 3) and all(np.array_equal(rgb[..., c], gray) for c in range(3))
    resized = decode_image(tmp_path / "deep.png", (16, 16), "L")
    assert 100 < resized.mean() < 155  # a ramp over the full range averages mid-grey


def test_float_tiff_in_0_1_decodes_by_255(tmp_path: Path) -> None:
    values = np.linspace(0.0, 1.0, 64, dtype=np.float32).reshape(8, 8)
    Image.fromarray(values, mode="F").save(tmp_path / "float.tif")
    gray = decode_image(tmp_path / "float.tif", None, "L")[..., 0]
    np.testing.assert_array_equal(gray, np.rint(values * 255).astype(np.uint8))


def test_folder_needs_two_classes_with_readable_images(tmp_path, fakes, rng):
    _folder(tmp_path / "one", fakes, rng, {"only": 6})
    with pytest.raises(DatasetError, match="at least two classes with readable images.*only 6"):
        load_dataset("folder", tmp_path / "one")
    _folder(tmp_path / "two", fakes, rng, {"good": 6})
    (tmp_path / "two" / "bad").mkdir()
    for i in range(3):
        (tmp_path / "two" / "bad" / f"{i}.png").write_bytes(b"not an image")
    with pytest.raises(DatasetError, match="bad 0, good 6"):
        load_dataset("folder", tmp_path / "two")


def test_folder_warns_once_with_counts_about_empty_and_shrunk_classes(tmp_path, fakes, rng, caplog):
    _folder(tmp_path, fakes, rng, {"a": 5, "b": 5})
    (tmp_path / "empty").mkdir()
    (tmp_path / "b" / "broken.png").write_bytes(b"not an image")
    with caplog.at_level(logging.WARNING):
        ds = load_dataset("folder", tmp_path)
    assert ds.classes == ["a", "b", "empty"]
    lost = [r.getMessage() for r in caplog.records if "lost images" in r.getMessage()]
    assert len(lost) == 1 and "b 5 of 6" in lost[0] and "empty 0 of 0" in lost[0] and "a 5" not in lost[0]


def test_folder_with_one_image_per_class_loads(tmp_path, fakes, rng):
    _folder(tmp_path, fakes, rng, {"a": 1, "b": 1, "c": 1})
    ds = load_dataset("folder", tmp_path)
    assert len(ds.train) + len(ds.val) == 3 and len(ds.train) >= 1


def test_folder_of_huge_images_defaults_to_224_not_their_size(tmp_path, fakes, rng, caplog):
    _folder(tmp_path / "train", fakes, rng, {"a": 2, "b": 2}, size=(400, 500))
    _folder(tmp_path / "val", fakes, rng, {"a": 1, "b": 1}, size=(400, 500))
    with caplog.at_level(logging.INFO):
        ds = load_dataset("folder", tmp_path)
    assert ds.image_size == (224, 224) and "--img-size" in caplog.text
    assert load_dataset("folder", tmp_path, image_size=(400, 500)).image_size == (400, 500)
