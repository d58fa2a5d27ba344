"""Decoding image files (JPEG, PNG, ...) with Pillow into uint8 tensors, eagerly or lazily (`FolderStream`).

Pillow is imported inside the functions so that `compact_transformers.data` imports without it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.utils.data

from ..errors import DatasetError
from .core import as_index

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm")
GRAY_MODES = ("1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")


def read_header(path: Path) -> tuple[str, tuple[int, int]] | None:
    """(mode, (H, W)) of an image file from its header alone, or None (with a warning) if it cannot be opened."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.mode, (im.height, im.width)
    except Exception as err:  # Pillow raises many types for bad files; any of them means "skip this file"
        logger.warning("skipping unreadable image %s: %s", path, err)
        return None


def as_8bit(im):
    """A 16-bit, 32-bit integer or float image rescaled to 8 bits ('L'); any other image as it is.

    Pillow's own ``convert("L")`` clips such pixels at 255, which turns a 16-bit PNG all white. Here 16-bit
    values map by 255/65535; 32-bit integers by their range (8-bit values kept, else 16-bit); floats in [0, 1]
    by 255 (other floats by the same rule as integers).
    """
    from PIL import Image

    if im.mode not in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        return im
    values = np.asarray(im, dtype=np.float64)
    peak = float(values.max()) if values.size else 0.0
    if im.mode.startswith("I;16"):
        scale = 255 / 65535
    elif im.mode == "F" and float(values.min(initial=0.0)) >= 0.0 and peak <= 1.0:
        scale = 255.0
    else:
        scale = 1.0 if peak <= 255 else 255 / 65535 if peak <= 65535 else 255 / peak
    return Image.fromarray(np.clip(np.rint(values * scale), 0, 255).astype(np.uint8), mode="L")


def decode_image(path: Path, size: tuple[int, int] | None, mode: str) -> np.ndarray:
    """Decode one file to a uint8 array (H, W, C) in `mode` ('RGB' or 'L').

    With `size` = (H, W) the image is scaled so that it covers H x W (short side to size for squares) and
    center-cropped, in one bicubic resize. Raises whatever Pillow raises for a corrupt file.
    """
    from PIL import Image

    with Image.open(path) as im:
        if size is not None:
            h, w = size
            scale = max(h / im.height, w / im.width)
            # Let the JPEG decoder downscale by a power of two first (much faster, stays >= the needed size).
            im.draft(mode, (max(1, round(im.width * scale)), max(1, round(im.height * scale))))
        im = as_8bit(im).convert(mode)
        if size is not None and (im.height, im.width) != size:
            h, w = size
            scale = max(h / im.height, w / im.width)
            crop_w, crop_h = w / scale, h / scale
            # clamped: rounding can make an enlarged image's box start a hair below 0, which Pillow refuses
            left, top = max((im.width - crop_w) / 2, 0.0), max((im.height - crop_h) / 2, 0.0)
            im = im.resize((w, h), Image.Resampling.BICUBIC, box=(left, top, left + crop_w, top + crop_h))
        arr = np.array(im, dtype=np.uint8)  # a writable copy
    return arr[:, :, None] if arr.ndim == 2 else arr


def _to_chw(arr: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


def decode_files(
    files: Sequence[Path], size: tuple[int, int], mode: str, workers: int | None = None
) -> tuple[torch.Tensor, list[int]]:
    """Decode `files` to one uint8 (N, C, H, W) tensor; returns (images, positions of the files that were decoded).

    A file that fails to decode is skipped with a logged warning naming it. Pillow releases the GIL while it
    decodes and resizes, so a thread pool uses all cores.
    """
    chans = 1 if mode == "L" else 3
    out = torch.empty((len(files), chans, *size), dtype=torch.uint8)
    kept: list[int] = []

    def work(path: Path) -> np.ndarray | None:
        try:
            return decode_image(path, size, mode)
        except Exception as err:  # a corrupt file must not stop the whole dataset
            logger.warning("skipping unreadable image %s: %s", path, err)
            return None

    workers = workers or min(8, os.cpu_count() or 1)
    block = 64 * workers  # bounded number of pending results
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for start in range(0, len(files), block):
            for offset, arr in enumerate(pool.map(work, files[start : start + block])):
                if arr is not None:
                    out[len(kept)] = _to_chw(arr)
                    kept.append(start + offset)
    return out[: len(kept)], kept


class FolderStream(torch.utils.data.Dataset):
    """A lazily decoded image split: item i is (uint8 tensor (C, H, W) at `image_size`, int label).

    Use it with a `torch.utils.data.DataLoader` (num_workers > 0 decodes in parallel). A file that turns out
    to be unreadable is replaced by the next readable one, with a logged warning.
    """

    def __init__(self, files: Sequence[Path], labels: torch.Tensor, image_size: tuple[int, int], mode: str) -> None:
        if len(files) != labels.numel():
            raise ValueError(f"FolderStream: {len(files)} files but {labels.numel()} labels; expected equal counts")
        if mode not in ("RGB", "L"):
            raise ValueError(f"FolderStream: mode must be 'RGB' or 'L', got {mode!r}")
        self.files = [Path(f) for f in files]
        self.labels = labels.to(torch.int64)
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.mode = mode

    @property
    def in_chans(self) -> int:
        return 1 if self.mode == "L" else 3

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        n = len(self.files)
        for attempt in range(min(n, 16)):
            i = (index + attempt) % n
            try:
                arr = decode_image(self.files[i], self.image_size, self.mode)
            except Exception as err:  # skip to the next file rather than crash a training epoch
                logger.warning("skipping unreadable image %s: %s", self.files[i], err)
                continue
            return _to_chw(arr), int(self.labels[i])
        raise DatasetError(f"FolderStream: no readable image among the {min(n, 16)} files from index {index}")

    def select(self, indices: torch.Tensor | Sequence[int]) -> FolderStream:
        """A stream over the files at `indices`."""
        idx = as_index(indices, len(self))
        return FolderStream(
            [self.files[i] for i in idx.tolist()], self.labels.index_select(0, idx), self.image_size, self.mode
        )
