"""Writers of small fake dataset files, in the real on-disk formats, for the data tests."""

from __future__ import annotations

import gzip
import io
import pickle
import struct
import tarfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest


class _Python2StylePickler(pickle.Pickler):
    """Pickles arrays the way the original (Python 2, numpy 1) CIFAR files do: via
    numpy.core.multiarray._reconstruct with the raw bytes stored as a (latin1) string."""

    def reducer_override(self, obj: object) -> object:
        if isinstance(obj, np.ndarray):
            from numpy._core.multiarray import _reconstruct

            state = (1, obj.shape, obj.dtype, False, obj.tobytes().decode("latin1"))
            return _reconstruct, (np.ndarray, (0,), "b"), state
        return NotImplemented


def dump_pickle(obj: object, path: Path, python2_style: bool) -> None:
    if python2_style:
        buf = io.BytesIO()
        _Python2StylePickler(buf, protocol=2).dump(obj)
        data = buf.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
        assert b"_reconstruct" not in data or b"cnumpy.core.multiarray\n_reconstruct\n" in data
    else:
        data = pickle.dumps(obj)  # the current protocol: numpy arrays via _frombuffer
    path.write_bytes(data)


def write_cifar(root: Path, variant: str = "cifar10", per_batch: int = 4, n_test: int = 6,
                python2_style: bool = True, seed: int = 0) -> dict:  # fmt: skip
    """Write a CIFAR python-version folder under `root`; returns the arrays written."""
    rng = np.random.default_rng(seed)
    if variant == "cifar10":
        folder, train_files = "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)]
        test_file, meta_file = "test_batch", "batches.meta"
        label_key, names_key, num_classes = "labels", "label_names", 10
    else:
        folder, train_files, test_file, meta_file = "cifar-100-python", ["train"], "test", "meta"
        label_key, names_key, num_classes = "fine_labels", "fine_label_names", 100
    out = root / folder
    out.mkdir(parents=True)
    written = {"train_data": [], "train_labels": []}
    for i, file in enumerate([*train_files, test_file]):
        n = n_test if file == test_file else per_batch
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = rng.integers(0, num_classes, size=n).tolist()
        names = [f"img{j}.png" for j in range(n)]
        batch = {"batch_label": f"batch {i}", "data": data, label_key: labels, "filenames": names}
        if variant == "cifar100":
            batch["coarse_labels"] = [c // 5 for c in labels]
        dump_pickle(batch, out / file, python2_style)
        if file == test_file:
            written["test_data"], written["test_labels"] = data, labels
        else:
            written["train_data"].append(data)
            written["train_labels"] += labels
    names = [f"class_{c}" for c in range(num_classes)]
    dump_pickle({names_key: names, "num_cases_per_batch": per_batch}, out / meta_file, python2_style)
    written["train_data"] = np.concatenate(written["train_data"])
    written["folder"], written["names"] = out, names
    return written


def make_tar_gz(folder: Path, archive: Path) -> Path:
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    return archive


def idx_bytes(array: np.ndarray) -> bytes:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_mnist(root: Path, n_train: int = 20, n_test: int = 10, gz: bool = False, seed: int = 0) -> dict:
    """Write the four MNIST idx files (plain or .gz) into `root`; returns the arrays written."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, size=(n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, size=n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, size=(n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, size=n_test, dtype=np.uint8),
    }
    for name, array in arrays.items():
        data = idx_bytes(array)
        if gz:
            (root / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (root / name).write_bytes(data)
    return arrays


def write_image(path: Path, array: np.ndarray, fmt: str | None = None) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    mode = "L" if array.ndim == 2 else "RGB"
    Image.fromarray(array, mode=mode).save(path, format=fmt)


@pytest.fixture
def fakes() -> SimpleNamespace:
    """The writers above, for tests (test modules cannot import conftest by name)."""
    return SimpleNamespace(
        dump_pickle=dump_pickle, write_cifar=write_cifar, make_tar_gz=make_tar_gz, idx_bytes=idx_bytes,
        write_mnist=write_mnist, write_image=write_image,
    )  # fmt: skip


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)
