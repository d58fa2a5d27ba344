"""One reader per on-disk format. Each returns a `RawDataset` of uint8 splits; `load.py` finishes the job
(validation split, resizing, mean/std).

Optional dependencies (scikit-learn for digits, scipy for .mat files, Pillow for image files) are imported
inside the reader that needs them.
"""

from __future__ import annotations

import functools
import gzip
import io
import json
import logging
import pickle
import struct
import tarfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import DatasetError
from .core import ImageSplit, stratified_split
from .images import (
    GRAY_MODES,
    IMAGE_EXTENSIONS,
    FolderStream,
    decode_files,
    read_header,
)

logger = logging.getLogger(__name__)

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian package dataset-fashion-mnist
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip


@dataclass
class RawDataset:
    """What a reader found on disk. `val`/`test` are None when the format has no such split."""

    train: ImageSplit
    val: ImageSplit | None
    test: ImageSplit | None
    classes: list[str]
    skipped: int = 0
    train_stream: FolderStream | None = None


def _labels(values: object) -> torch.Tensor:
    return torch.as_tensor(np.asarray(values, dtype=np.int64).reshape(-1))


# -----------------------------------------------------------------------------
# digits (scikit-learn)


def read_digits() -> RawDataset:
    """scikit-learn's bundled 8x8 digits: 1797 grayscale images, values 0..16 scaled to 0..255. No files needed.

    There is no official split: everything is returned as `train` for the caller to split.
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:
        raise DatasetError("digits: needs scikit-learn; install with `pip install scikit-learn`") from err
    bunch = load_digits()
    images = np.rint(bunch.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)[:, None]
    split = ImageSplit(images=torch.from_numpy(np.ascontiguousarray(images)), labels=_labels(bunch.target))
    return RawDataset(train=split, val=None, test=None, classes=[str(d) for d in range(10)])


# -----------------------------------------------------------------------------
# CIFAR-10 / CIFAR-100 (python pickle version)


@functools.cache
def _numpy_globals() -> dict[tuple[str, str], object]:
    """The only globals a CIFAR pickle may name: numpy's array/dtype reconstruction helpers."""
    try:  # numpy >= 2 (and the 1.26 compatibility alias)
        from numpy._core import multiarray, numeric
    except ImportError:  # older numpy
        from numpy.core import multiarray, numeric  # type: ignore[no-redef]
    allowed: dict[tuple[str, str], object] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for package in ("numpy.core", "numpy._core"):  # files written by numpy 1.x name numpy.core, 2.x numpy._core
        allowed[(f"{package}.multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(f"{package}.numeric", "_frombuffer")] = numeric._frombuffer
    return allowed


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that can build dicts, lists, strings and numpy arrays, and refuses every other global."""

    def find_class(self, module: str, name: str) -> object:
        allowed = _numpy_globals()
        if (module, name) not in allowed:
            raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed in a dataset file")
        return allowed[(module, name)]


def safe_unpickle(data: bytes, where: str) -> dict[str, object]:
    """Unpickle a CIFAR batch/meta file (a dict) without running anything; keys are returned as str."""
    try:
        # latin1 turns Python 2 byte strings (the original CIFAR files) into str, which numpy accepts as data
        obj = _NumpyOnlyUnpickler(io.BytesIO(data), encoding="latin1").load()
    except Exception as err:  # a bad pickle can raise almost anything
        raise DatasetError(f"cannot unpickle {where}: {err}") from err
    if not isinstance(obj, dict):
        raise DatasetError(f"{where}: expected a pickled dict, got {type(obj).__name__}")
    return {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in obj.items()}


@dataclass(frozen=True)
class _CifarLayout:
    folder: str  # the extracted folder, also the top folder inside the archive
    archive: str
    train_files: tuple[str, ...]
    test_file: str
    meta_file: str
    label_key: str
    names_key: str


_CIFAR_LAYOUTS = {
    "cifar10": _CifarLayout(
        folder="cifar-10-batches-py",
        archive="cifar-10-python.tar.gz",
        train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test_file="test_batch",
        meta_file="batches.meta",
        label_key="labels",
        names_key="label_names",
    ),
    "cifar100": _CifarLayout(
        folder="cifar-100-python",
        archive="cifar-100-python.tar.gz",
        train_files=("train",),
        test_file="test",
        meta_file="meta",
        label_key="fine_labels",
        names_key="fine_label_names",
    ),
}


def _cifar_files(name: str, path: Path) -> tuple[Callable[[str], bytes], str]:
    """Find the CIFAR files under `path`: returns (read(file name) -> bytes, description of the location)."""
    layout = _CIFAR_LAYOUTS[name]
    folder, archive, test_file, meta_file = layout.folder, layout.archive, layout.test_file, layout.meta_file
    needed = [*layout.train_files, test_file, meta_file]
    expected = f"{name}: expected {folder}/ ({', '.join(needed)}) or {archive} in {path}; pass --data DIR"
    if path.is_dir():
        for candidate in (path, path / folder):
            if (candidate / meta_file).is_file() and (candidate / test_file).is_file():

                def read_file(file: str, root: Path = candidate) -> bytes:
                    target = root / file
                    if not target.is_file():
                        raise DatasetError(f"{name}: expected {file} in {root}")
                    return target.read_bytes()

                return read_file, str(candidate)
        if not (path / archive).is_file():
            raise DatasetError(expected)
        path = path / archive
    if not path.is_file():
        raise DatasetError(expected)
    try:
        with tarfile.open(path, "r:*") as tar:
            members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
            contents = {}
            for file in needed:
                if file not in members:
                    raise DatasetError(f"{name}: expected {folder}/{file} inside the archive {path}")
                contents[file] = tar.extractfile(members[file]).read()
    except (tarfile.TarError, OSError, EOFError) as err:
        raise DatasetError(f"{name}: cannot read the archive {path}: {err}") from err
    return contents.__getitem__, str(path)


def _cifar_batch(read_file: Callable[[str], bytes], file: str, where: str, label_key: str) -> ImageSplit:
    where = f"{where}/{file}"
    batch = safe_unpickle(read_file(file), where)
    data, labels = batch.get("data"), batch.get(label_key)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        got = type(data).__name__ if not isinstance(data, np.ndarray) else f"{data.dtype}{list(data.shape)}"
        raise DatasetError(f"{where}: expected 'data' as a uint8 array of shape (N, 3072), got {got}")
    if labels is None or len(labels) != data.shape[0]:
        raise DatasetError(f"{where}: expected '{label_key}' with {data.shape[0]} labels")
    images = torch.from_numpy(data.reshape(-1, 3, 32, 32).copy())  # rows are R, G, B planes of 32x32
    return ImageSplit(images=images, labels=_labels(labels))


def read_cifar(name: str, path: Path) -> RawDataset:
    """CIFAR-10 / CIFAR-100, python version: the extracted folder (cifar-10-batches-py / cifar-100-python),
    a directory holding it, or the .tar.gz archive. Pickles are read with numpy-only globals allowed.
    CIFAR-100 uses the 100 fine labels."""
    layout = _CIFAR_LAYOUTS[name]
    read_file, where = _cifar_files(name, path)
    meta = safe_unpickle(read_file(layout.meta_file), f"{where}/{layout.meta_file}")
    if not isinstance(meta.get(layout.names_key), list):
        raise DatasetError(f"{where}/{layout.meta_file}: expected a list '{layout.names_key}' of class names")
    classes = [n.decode("latin1") if isinstance(n, bytes) else str(n) for n in meta[layout.names_key]]
    batches = [_cifar_batch(read_file, f, where, layout.label_key) for f in layout.train_files]
    train = ImageSplit(images=torch.cat([b.images for b in batches]), labels=torch.cat([b.labels for b in batches]))
    test = _cifar_batch(read_file, layout.test_file, where, layout.label_key)
    for split_name, split in (("train", train), ("test", test)):
        if len(split) and (int(split.labels.min()) < 0 or int(split.labels.max()) >= len(classes)):
            raise DatasetError(f"{name}: {split_name} labels must lie in [0, {len(classes)}) in {where}")
    return RawDataset(train=train, val=None, test=test, classes=classes)


# -----------------------------------------------------------------------------
# MNIST / Fashion-MNIST (idx files)

_IDX_UBYTE = 0x08


def _idx_candidates(stem: str) -> list[str]:
    # the official names use '-idx', some mirrors '.idx'
    names = [stem, stem.replace("-idx", ".idx")]
    return [n + ext for n in names for ext in ("", ".gz")]


def find_idx_file(root: Path, stem: str) -> Path | None:
    """The file for `stem` (e.g. 'train-images-idx3-ubyte', plain or .gz) in `root` or `root/raw`, or None."""
    for folder in (root, root / "raw"):
        for candidate in _idx_candidates(stem):
            if (folder / candidate).is_file():
                return folder / candidate
    return None


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """Read an idx file of unsigned bytes with `ndim` dimensions (plain or gzip), checking magic and size."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as err:
        raise DatasetError(f"cannot read {path}: {err}") from err
    if len(raw) < 4 + 4 * ndim:
        raise DatasetError(f"{path}: truncated idx file ({len(raw)} bytes, shorter than its header)")
    zero, dtype, dims = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype != _IDX_UBYTE or dims != ndim:
        expected = 0x800 + ndim
        raise DatasetError(
            f"{path}: wrong magic number 0x{int.from_bytes(raw[:4], 'big'):08x}, expected 0x{expected:08x} "
            f"(idx, unsigned byte, {ndim} dims)"
        )
    shape = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    expected_len = 4 + 4 * ndim + int(np.prod(shape, dtype=np.int64))
    if len(raw) != expected_len:
        state = "truncated" if len(raw) < expected_len else "has trailing data"
        raise DatasetError(f"{path}: {state}: {len(raw)} bytes, expected {expected_len} for shape {shape}")
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape).copy()


def read_mnist(name: str, path: Path | None) -> RawDataset:
    """MNIST or Fashion-MNIST from the four idx files (plain or .gz). Fashion-MNIST defaults to the Debian
    package's directory /usr/share/datasets/fashion-mnist."""
    fashion = name == "fashion_mnist"
    hint = (
        "install with `apt-get install dataset-fashion-mnist` or pass --data DIR"
        if fashion
        else "pass --data DIR holding the MNIST idx files"
    )
    if path is None:
        if not fashion:
            raise DatasetError(f"mnist: no data directory given; {hint}")
        path = FASHION_MNIST_DIR
    splits = []
    for prefix in ("train", "t10k"):
        files = []
        for kind, ndim in (("images", 3), ("labels", 1)):
            stem = f"{prefix}-{kind}-idx{ndim}-ubyte"
            found = find_idx_file(path, stem)
            if found is None:
                raise DatasetError(f"{name}: expected {stem}(.gz) in {path}; {hint}")
            files.append(found)
        images, labels = read_idx(files[0], 3), read_idx(files[1], 1)
        if images.shape[0] != labels.shape[0]:
            raise DatasetError(
                f"{name}: {files[0]} has {images.shape[0]} images but {files[1]} has {labels.shape[0]} labels"
            )
        if labels.size and labels.max() > 9:
            raise DatasetError(f"{files[1]}: labels must lie in 0..9, found {labels.max()}")
        splits.append(ImageSplit(images=torch.from_numpy(images[:, None].copy()), labels=_labels(labels)))
    classes = FASHION_MNIST_CLASSES if fashion else [str(d) for d in range(10)]
    return RawDataset(train=splits[0], val=None, test=splits[1], classes=list(classes))


# -----------------------------------------------------------------------------
# Oxford Flowers-102


def _load_mat(path: Path) -> dict[str, object]:
    try:
        from scipy.io import loadmat
    except ImportError as err:
        raise DatasetError("flowers102: reading .mat files needs scipy; install with `pip install scipy`") from err
    if not path.is_file():
        raise DatasetError(f"flowers102: expected {path.name} in {path.parent}")
    try:
        return loadmat(path)
    except Exception as err:  # scipy raises several types for a bad file
        raise DatasetError(f"flowers102: cannot read {path}: {err}") from err


def _mat_vector(mat: dict[str, object], key: str, path: Path) -> np.ndarray:
    if key not in mat:
        raise DatasetError(f"{path}: expected the key '{key}'")
    return np.asarray(mat[key]).reshape(-1).astype(np.int64)


def read_flowers102(path: Path, image_size: tuple[int, int]) -> RawDataset:
    """Oxford Flowers-102: jpg/image_00001.jpg..., imagelabels.mat ('labels', 1-based) and setid.mat
    ('trnid', 'valid', 'tstid', 1-based image ids) give the official train/val/test splits. Images are
    resized (short side) and center-cropped to `image_size`. Classes are "1".."102", or the names from an
    optional cat_to_name.json ({"1": "pink primrose", ...})."""
    labels_path, setid_path = path / "imagelabels.mat", path / "setid.mat"
    labels = _mat_vector(_load_mat(labels_path), "labels", labels_path)
    setid = _load_mat(setid_path)
    if labels.size == 0 or labels.min() < 1:
        raise DatasetError(f"{labels_path}: expected 1-based labels")
    num_classes = int(labels.max())
    skipped = 0
    splits = []
    for key in ("trnid", "valid", "tstid"):
        ids = _mat_vector(setid, key, setid_path)
        if ids.size and (ids.min() < 1 or ids.max() > labels.size):
            raise DatasetError(f"{setid_path}: '{key}' ids must lie in 1..{labels.size}")
        files = [path / "jpg" / f"image_{i:05d}.jpg" for i in ids]
        missing = [f for f in files if not f.is_file()]
        if len(missing) == len(files) and files:
            raise DatasetError(f"flowers102: expected {files[0].name} ... in {path / 'jpg'}")
        for f in missing:
            logger.warning("skipping missing image %s", f)
        present = [i for i, f in enumerate(files) if f.is_file()]
        images, kept = decode_files([files[i] for i in present], image_size, "RGB")
        skipped += len(files) - len(kept)
        decoded_ids = ids[np.asarray(present, dtype=np.int64)][np.asarray(kept, dtype=np.int64)]
        splits.append(ImageSplit(images=images, labels=torch.from_numpy(labels[decoded_ids - 1] - 1)))
    classes = [str(c) for c in range(1, num_classes + 1)]
    names_file = path / "cat_to_name.json"
    if names_file.is_file():
        names = json.loads(names_file.read_text())
        classes = [str(names.get(c, c)) for c in classes]
    return RawDataset(train=splits[0], val=splits[1], test=splits[2], classes=classes, skipped=skipped)


# -----------------------------------------------------------------------------
# image folders (ImageFolder layout)


def class_dirs(root: Path) -> list[str]:
    """The sorted names of the (not hidden) folders in ``root``: the classes of a class-folder layout."""
    return sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))


def class_folder_layout(path: Path, kind: str, example: str) -> tuple[Path | None, list[str]]:
    """(``path/train`` if the layout has one, else None; the class names) of a folder of class folders, for
    the ``kind`` reader ("folder", "text_folder"); ``example`` names a file for the error message."""
    if not path.is_dir():
        raise DatasetError(f"{kind}: expected a directory of class folders at {path}")
    train_root = path / "train" if (path / "train").is_dir() else None
    splits = [name for name in ("val", "test") if (path / name).is_dir()]
    if train_root is None and splits:  # else "val" and "test" would be taken for two classes
        raise DatasetError(f"{kind}: {path} has {'/ and '.join(splits)}/ but no train/: expected the training "
                           f"split's class folders in {path}/train (e.g. {path}/train/<class>/{example})")
    classes = class_dirs(train_root or path)
    if not classes:
        raise DatasetError(f"{kind}: expected class folders (e.g. {train_root or path}/<class>/{example}) in "
                           f"{train_root or path}")  # fmt: skip
    return train_root, classes


def check_split_classes(root: Path, classes: list[str], kind: str) -> None:
    """A validation or test split of a class-folder layout may only hold the training split's classes."""
    unknown = [c for c in class_dirs(root) if c not in classes]
    if unknown:
        raise DatasetError(f"{kind}: {root} has class folders {unknown} that are not in the train split")


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def _list_split(root: Path, classes: list[str]) -> tuple[list[Path], list[int]]:
    check_split_classes(root, classes, "folder")
    files, labels = [], []
    for label, cls in enumerate(classes):
        if (root / cls).is_dir():
            found = _image_files(root / cls)
            files += found
            labels += [label] * len(found)
    return files, labels


# The largest shared image size used as the model's input without --img-size: beyond it the token count (and
# with it memory and time) of a compact transformer explodes, e.g. 5000x5000 images would mean 1.5M tokens.
MAX_DEFAULT_SIDE = 384
DEFAULT_IMAGE_SIZE = (224, 224)


def _default_image_size(sizes: list[tuple[int, int]], root: Path) -> tuple[int, int]:
    """The images' shared size if they have one and it is moderate, else 224 x 224 (said in the log)."""
    if len(set(sizes)) == 1 and max(sizes[0]) <= MAX_DEFAULT_SIDE:
        return sizes[0]
    reason = "sizes differ" if len(set(sizes)) > 1 else f"they are {sizes[0][0]}x{sizes[0][1]}"
    logger.info("folder: images under %s are resized to %dx%d (%s); choose another size with --img-size",
                root, *DEFAULT_IMAGE_SIZE, reason)
    return DEFAULT_IMAGE_SIZE


def _check_class_counts(root: Path, classes: list[str], listed: list[int], usable: list[int]) -> None:
    """At least two classes with usable training images; one warning naming the classes that lost images."""
    found, kept = Counter(listed), Counter(usable)
    if sum(1 for label in range(len(classes)) if kept[label]) < 2:
        counts = ", ".join(f"{name} {kept[i]}" for i, name in enumerate(classes))
        raise DatasetError(f"folder: {root} needs at least two classes with readable images; usable images per "
                           f"class: {counts}")
    losses = [f"{name} {kept[i]} of {found[i]}" for i, name in enumerate(classes) if kept[i] < found[i] or not found[i]]
    if losses:
        logger.warning("folder: some classes under %s lost images (usable of found; unreadable files are skipped, "
                       "an empty class is never seen in training): %s", root, ", ".join(losses))


def read_folder(
    path: Path,
    image_size: tuple[int, int] | None,
    val_fraction: float,
    seed: int,
    max_memory_bytes: int,
) -> RawDataset:
    """ImageFolder layout: path/train/<class>/*.jpg|png|... with path/val/<class> and/or path/test/<class>,
    or, without train/, path/<class>/... split by `val_fraction` (default 0.2). Classes are the sorted
    folder names. Images become RGB (L if all are grayscale) at `image_size` (default: the shared size of
    all images, else 224; short-side resize + center crop). Unreadable files are skipped and counted.
    When the decoded train split exceeds `max_memory_bytes`, it is returned as a lazy `FolderStream`."""
    train_root, classes = class_folder_layout(path, "folder", "*.png")
    has_train, train_root = train_root is not None, train_root or path
    lists = {"train": _list_split(train_root, classes)}
    if has_train:
        for split in ("val", "test"):
            if (path / split).is_dir():
                lists[split] = _list_split(path / split, classes)
        if "val" not in lists and "test" not in lists and val_fraction == 0:
            raise DatasetError(
                f"folder: expected {path}/val or {path}/test next to {path}/train (or pass val_fraction > 0)"
            )

    listed_train = list(lists["train"][1])
    # Header pass: drop unreadable files, learn the modes and sizes without decoding.
    skipped = 0
    modes, sizes = set(), []
    for split, (files, labels) in list(lists.items()):
        keep = []
        for i, f in enumerate(files):
            header = read_header(f)
            if header is None:
                skipped += 1
                continue
            keep.append(i)
            modes.add(header[0])
            sizes.append(header[1])
        lists[split] = ([files[i] for i in keep], [labels[i] for i in keep])
    if not lists["train"][0]:
        raise DatasetError(f"folder: found no readable images ({', '.join(IMAGE_EXTENSIONS)}) under {train_root}")
    mode = "L" if modes <= set(GRAY_MODES) else "RGB"
    if image_size is None:
        image_size = _default_image_size(sizes, path)

    # Validation split: the official val/, else carved out of train (test/ then stays the test split).
    carved = False
    if "val" not in lists:
        fraction = val_fraction if (val_fraction > 0 or has_train) else 0.2
        if fraction > 0:
            files, labels = lists["train"]
            train_idx, val_idx = stratified_split(torch.tensor(labels, dtype=torch.int64), fraction, seed)
            lists["val"] = ([files[i] for i in val_idx.tolist()], [labels[i] for i in val_idx.tolist()])
            lists["train"] = ([files[i] for i in train_idx.tolist()], [labels[i] for i in train_idx.tolist()])
            carved = True
        else:  # train/ + test/ only: test/ is the validation split
            lists["val"] = lists.pop("test")
    elif val_fraction > 0:
        logger.warning("folder: %s has an official val/ split; ignoring val_fraction=%s", path, val_fraction)

    def decode(split: str) -> ImageSplit:
        """The split's images; a file whose data fails to decode (behind a good header) leaves ``lists`` too."""
        nonlocal skipped
        files, labels = lists[split]
        images, kept = decode_files(files, image_size, mode)
        skipped += len(files) - len(kept)
        lists[split] = ([files[i] for i in kept], [labels[i] for i in kept])
        return ImageSplit(images=images, labels=torch.tensor(lists[split][1], dtype=torch.int64))

    chans = 1 if mode == "L" else 3
    per_image = chans * image_size[0] * image_size[1]
    total = sum(len(files) for files, _ in lists.values()) * per_image
    stream = None
    if total > max_memory_bytes:
        files, labels = lists["train"]
        label_tensor = torch.tensor(labels, dtype=torch.int64)
        stream = FolderStream(files, label_tensor, image_size, mode)
        train = ImageSplit(images=None, labels=label_tensor)
        logger.info("folder: %d train images (%.1f GiB decoded) exceed max_memory_bytes; streaming them",
                 len(files), len(files) * per_image / 2**30)  # fmt: skip
    else:
        train = decode("train")
    val = decode("val")
    # after decoding: a class whose files all hold damaged data behind good headers is as empty as no files
    _check_class_counts(train_root, classes, listed=listed_train,
                        usable=lists["train"][1] + (lists["val"][1] if carved else []))  # fmt: skip
    test = decode("test") if "test" in lists else None
    return RawDataset(train=train, val=val, test=test, classes=classes, skipped=skipped, train_stream=stream)
