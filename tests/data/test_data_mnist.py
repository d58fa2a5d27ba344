import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from compact_transformers.data import DatasetError, detect_dataset, load_dataset

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_idx_files(tmp_path, fakes, gz):
    arrays = fakes.write_mnist(tmp_path / "mnist", n_train=30, n_test=12, gz=gz)
    ds = load_dataset("mnist", tmp_path / "mnist")
    assert ds.train.images.shape == (30, 1, 28, 28) and ds.val.images.shape == (12, 1, 28, 28)
    assert ds.test is None
    assert torch.equal(ds.train.images[:, 0], torch.from_numpy(arrays["train-images-idx3-ubyte"]))
    assert ds.val.labels.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()
    assert ds.classes == [str(d) for d in range(10)]
    x = arrays["train-images-idx3-ubyte"].astype(np.float64) / 255
    assert ds.mean[0] == pytest.approx(x.mean(), rel=1e-9) and ds.std[0] == pytest.approx(x.std(), rel=1e-9)


def test_fashion_mnist_detected_from_folder_name(tmp_path, fakes):
    fakes.write_mnist(tmp_path / "fashion-mnist", gz=True)
    assert detect_dataset(tmp_path / "fashion-mnist") == "fashion_mnist"
    ds = load_dataset(path=tmp_path / "fashion-mnist", val_fraction=0.5)
    assert ds.name == "fashion_mnist" and ds.classes[0] == "T-shirt/top" and ds.classes[9] == "Ankle boot"
    assert len(ds.train) + len(ds.val) == 20 and len(ds.test) == 10


def test_missing_files_message(tmp_path):
    with pytest.raises(DatasetError) as err:
        load_dataset("fashion_mnist", tmp_path)
    message = str(err.value)
    assert f"fashion_mnist: expected train-images-idx3-ubyte(.gz) in {tmp_path}" in message
    assert "apt-get install dataset-fashion-mnist" in message and "--data DIR" in message
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset("mnist", tmp_path / "nope")


def test_truncated_idx_names_the_file(tmp_path, fakes):
    fakes.write_mnist(tmp_path)
    images = tmp_path / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-100])
    with pytest.raises(DatasetError, match=r"train-images-idx3-ubyte: truncated"):
        load_dataset("mnist", tmp_path)
    images.write_bytes(images.read_bytes()[:10])  # shorter than the header
    with pytest.raises(DatasetError, match=r"train-images-idx3-ubyte: truncated"):
        load_dataset("mnist", tmp_path)


def test_truncated_gzip_names_the_file(tmp_path, fakes):
    fakes.write_mnist(tmp_path, gz=True)
    labels = tmp_path / "t10k-labels-idx1-ubyte.gz"
    labels.write_bytes(labels.read_bytes()[:-12])
    with pytest.raises(DatasetError, match=r"t10k-labels-idx1-ubyte.gz"):
        load_dataset("mnist", tmp_path)


def test_wrong_magic_names_the_file(tmp_path, fakes):
    fakes.write_mnist(tmp_path)
    labels = tmp_path / "train-labels-idx1-ubyte"
    data = bytearray(labels.read_bytes())
    data[2] = 0x0D  # float type instead of unsigned byte
    labels.write_bytes(bytes(data))
    expected = r"train-labels-idx1-ubyte: wrong magic number 0x00000d01, expected 0x00000801"
    with pytest.raises(DatasetError, match=expected):
        load_dataset("mnist", tmp_path)


def test_label_count_mismatch(tmp_path, fakes):
    fakes.write_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(fakes.idx_bytes(np.zeros(3, dtype=np.uint8)))
    with pytest.raises(DatasetError, match="has 10 images but"):
        load_dataset("mnist", tmp_path)


def test_gzip_and_plain_give_identical_data(tmp_path, fakes):
    fakes.write_mnist(tmp_path / "a", seed=3)
    root = tmp_path / "b"
    root.mkdir()
    for f in (tmp_path / "a").iterdir():
        (root / (f.name + ".gz")).write_bytes(gzip.compress(f.read_bytes()))
    a, b = load_dataset("mnist", tmp_path / "a"), load_dataset("mnist", root)
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.val.labels, b.val.labels)


@pytest.mark.slow
@pytest.mark.skipif(not FASHION_DIR.is_dir(), reason="dataset-fashion-mnist is not installed")
def test_real_fashion_mnist():
    ds = load_dataset("fashion_mnist")  # path defaults to the Debian package directory
    assert ds.train.images.shape == (60000, 1, 28, 28) and ds.val.images.shape == (10000, 1, 28, 28)
    assert torch.bincount(ds.train.labels).tolist() == [6000] * 10
    assert ds.mean[0] == pytest.approx(0.2860, abs=1e-3) and ds.std[0] == pytest.approx(0.3530, abs=1e-3)
