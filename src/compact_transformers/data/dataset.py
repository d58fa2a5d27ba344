"""`ImageDataset`: the splits of a loaded dataset, its classes and normalization statistics.

It sits above `core.py` (the splits) and `images.py` (`FolderStream`, the lazily decoded train split of a
folder too big for memory), so that `core.py` does not need `images.py`, which builds on it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import DatasetError
from .core import ImageSplit
from .images import FolderStream


@dataclass
class ImageDataset:
    """A dataset in memory. `val` is the split for model selection; `test` is an extra held-out split or None.

    `mean`/`std` are per channel in [0, 1] pixel units. `skipped` counts unreadable files that were left out.
    When the decoded train split would not fit in memory, `train.images` is None and `train_stream`
    (a `FolderStream`) decodes it lazily instead.
    """

    name: str
    train: ImageSplit
    val: ImageSplit
    test: ImageSplit | None
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    skipped: int = 0
    train_stream: FolderStream | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_chans(self) -> int:
        if self.train.images is None and self.train_stream is not None:
            return self.train_stream.in_chans
        return int(self._some_images().shape[1])

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W) of every image."""
        if self.train.images is None and self.train_stream is not None:
            return self.train_stream.image_size
        images = self._some_images()
        return int(images.shape[2]), int(images.shape[3])

    def _some_images(self) -> torch.Tensor:
        for split in (self.train, self.val, self.test):
            if split is not None and split.images is not None:
                return split.images
        raise DatasetError(f"{self.name}: no split holds images")

    def __repr__(self) -> str:
        test = "None" if self.test is None else str(len(self.test))
        return (
            f"ImageDataset(name={self.name!r}, train={len(self.train)}, val={len(self.val)}, test={test}, "
            f"num_classes={self.num_classes}, in_chans={self.in_chans}, image_size={self.image_size}, "
            f"streamed={self.train_stream is not None}, skipped={self.skipped})"
        )
