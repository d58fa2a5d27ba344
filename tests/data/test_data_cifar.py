import os
import pickle

import numpy as np
import pytest
import torch

from compact_transformers.data import DatasetError, detect_dataset, load_dataset


def _check_against_written(ds, written):
    expected_train = torch.from_numpy(written["train_data"].reshape(-1, 3, 32, 32))
    assert torch.equal(ds.train.images, expected_train)
    assert ds.train.labels.tolist() == written["train_labels"]
    assert ds.train.images.dtype == torch.uint8 and ds.train.images.is_contiguous()
    assert ds.train.labels.dtype == torch.int64


@pytest.mark.parametrize("python2_style", [True, False])
def test_cifar10_folder(tmp_path, fakes, python2_style):
    written = fakes.write_cifar(tmp_path, python2_style=python2_style)
    ds = load_dataset("cifar10", tmp_path)  # the parent of cifar-10-batches-py
    _check_against_written(ds, written)
    assert len(ds.train) == 20 and ds.test is None
    assert torch.equal(ds.val.images, torch.from_numpy(written["test_data"].reshape(-1, 3, 32, 32)))
    assert ds.classes == written["names"] and ds.num_classes == 10
    assert ds.image_size == (32, 32) and ds.in_chans == 3
    assert ds.mean == (0.4914, 0.4822, 0.4465) and ds.std == (0.2470, 0.2435, 0.2616)
    # the extracted folder itself works too, and is detected
    assert detect_dataset(written["folder"]) == "cifar10"
    assert len(load_dataset(path=written["folder"]).train) == 20


def test_cifar10_tar_gz_with_val_fraction(tmp_path, fakes):
    written = fakes.write_cifar(tmp_path / "src", per_batch=8, seed=5)
    archive = fakes.make_tar_gz(written["folder"], tmp_path / "cifar-10-python.tar.gz")
    ds = load_dataset(path=archive, val_fraction=0.25, seed=0)
    assert ds.name == "cifar10"
    assert len(ds.train) + len(ds.val) == 40 and len(ds.test) == 6
    assert torch.equal(ds.test.images, torch.from_numpy(written["test_data"].reshape(-1, 3, 32, 32)))
    # val was carved out of train: together they are the written train set
    together = torch.cat([ds.train.images, ds.val.images]).reshape(40, -1)
    expected = torch.from_numpy(written["train_data"])
    assert sorted(map(bytes, together.numpy())) == sorted(map(bytes, expected.numpy()))
    # a directory holding only the archive is found too
    other = tmp_path / "only_archive"
    other.mkdir()
    archive.rename(other / archive.name)
    assert load_dataset("cifar10", other).train.images.shape == (40, 3, 32, 32)


def test_cifar100_fine_labels(tmp_path, fakes):
    written = fakes.write_cifar(tmp_path, variant="cifar100", per_batch=12, python2_style=True)
    ds = load_dataset(path=tmp_path)
    assert ds.name == "cifar100" and ds.num_classes == 100 and ds.classes[3] == "class_3"
    _check_against_written(ds, written)
    assert ds.mean == (0.5071, 0.4867, 0.4408)


def test_cifar_missing_files_error(tmp_path, fakes):
    with pytest.raises(DatasetError, match=r"cifar10: expected cifar-10-batches-py/.*cifar-10-python.tar.gz in"):
        load_dataset("cifar10", tmp_path)
    written = fakes.write_cifar(tmp_path)
    (written["folder"] / "data_batch_3").unlink()
    with pytest.raises(DatasetError, match="data_batch_3"):
        load_dataset("cifar10", tmp_path)


class _RunsCommand:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def test_malicious_pickle_is_refused_without_side_effect(tmp_path, fakes):
    written = fakes.write_cifar(tmp_path)
    marker = tmp_path / "pwned"
    payload = {"data": _RunsCommand(f"touch {marker}"), "labels": [0]}
    (written["folder"] / "data_batch_1").write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(DatasetError, match=r"data_batch_1.*system.*not allowed"):
        load_dataset("cifar10", tmp_path)
    assert not marker.exists()


def test_non_uint8_array_is_rejected(tmp_path, fakes):
    written = fakes.write_cifar(tmp_path)
    batch = {"data": np.zeros((2, 3072), dtype=np.float32), "labels": [0, 1]}
    fakes.dump_pickle(batch, written["folder"] / "test_batch", python2_style=False)
    with pytest.raises(DatasetError, match=r"test_batch: expected 'data' as a uint8 array"):
        load_dataset("cifar10", tmp_path)


def test_resize_on_request(tmp_path, fakes):
    fakes.write_cifar(tmp_path)
    ds = load_dataset("cifar10", tmp_path, image_size=(40, 24))
    assert ds.train.images.shape == (20, 3, 40, 24) and ds.val.images.shape == (6, 3, 40, 24)
    assert ds.image_size == (40, 24)
