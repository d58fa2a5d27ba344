import subprocess
import sys

import pytest
import torch

from compact_transformers.data import DATASET_NAMES, DatasetError, detect_dataset, load_dataset


def test_digits_split_and_values():
    ds = load_dataset("digits")
    assert ds.train.images.shape[1:] == (1, 8, 8) and len(ds.train) + len(ds.val) == 1797
    assert ds.test is None and ds.classes == [str(d) for d in range(10)]
    assert int(ds.train.images.max()) == 255 and int(ds.train.images.min()) == 0
    counts_val = torch.bincount(ds.val.labels, minlength=10)
    counts_all = counts_val + torch.bincount(ds.train.labels, minlength=10)
    assert ((counts_val.double() / counts_all) - 0.2).abs().max() < 0.01  # stratified 80/20
    again = load_dataset("digits", seed=0)
    assert torch.equal(ds.val.labels, again.val.labels) and torch.equal(ds.val.images, again.val.images)
    x = ds.train.images.double() / 255
    assert ds.mean[0] == pytest.approx(x.mean().item(), rel=1e-9)
    assert ds.std[0] == pytest.approx(x.std(unbiased=False).item(), rel=1e-9)


def test_digits_upsampled():
    ds = load_dataset("digits", image_size=32, val_fraction=0.5)
    assert ds.image_size == (32, 32) and ds.train.images.dtype == torch.uint8
    assert abs(len(ds.val) - 1797 // 2) <= 10


def test_unknown_name_lists_known_names():
    with pytest.raises(DatasetError) as err:
        load_dataset("imagenet22k")
    assert "unknown dataset 'imagenet22k'" in str(err.value)
    assert all(name in str(err.value) for name in DATASET_NAMES)


def test_bad_arguments():
    with pytest.raises(ValueError, match="val_fraction"):
        load_dataset("digits", val_fraction=1.5)
    with pytest.raises(ValueError, match="image_size"):
        load_dataset("digits", image_size=(3, 4, 5))
    with pytest.raises(DatasetError, match="name .* or a path"):
        load_dataset()
    with pytest.raises(DatasetError, match="cifar10: no data path given"):
        load_dataset("cifar10")


def test_detection_errors(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        detect_dataset(tmp_path / "missing")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DatasetError, match="cannot tell which dataset"):
        detect_dataset(tmp_path)


def test_import_needs_only_torch_and_numpy():
    code = (
        "import sys; import compact_transformers.data as d; "
        "bad = [m for m in ('PIL', 'scipy', 'sklearn') if m in sys.modules]; "
        "assert not bad, bad; assert hasattr(d, 'load_dataset')"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
