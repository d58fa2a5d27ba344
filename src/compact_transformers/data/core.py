"""In-memory image splits: the `ImageSplit` container and the small tensor helpers that datasets need.

Everything here needs only torch (and numpy through torch); the readers live in `readers.py`, the decoding of
image files in `images.py`, and the `ImageDataset` that holds the splits in `dataset.py`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..models.config import as_size_pair


def _describe(t: torch.Tensor | None) -> str:
    return "None" if t is None else f"{str(t.dtype).removeprefix('torch.')}{list(t.shape)}"


# -----------------------------------------------------------------------------
# container


@dataclass
class ImageSplit:
    """One split: `images` uint8 (N, C, H, W) contiguous (None when the split is streamed), `labels` int64 (N,)."""

    images: torch.Tensor | None
    labels: torch.Tensor

    def __post_init__(self) -> None:
        if not isinstance(self.labels, torch.Tensor) or self.labels.dtype != torch.int64 or self.labels.dim() != 1:
            raise ValueError(f"ImageSplit.labels: expected an int64 tensor of shape (N,), got {_describe(self.labels)}")
        if self.images is None:
            return
        if not isinstance(self.images, torch.Tensor) or self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(
                f"ImageSplit.images: expected a uint8 tensor of shape (N, C, H, W), got {_describe(self.images)}"
            )
        if not self.images.is_contiguous():
            raise ValueError("ImageSplit.images: expected a contiguous tensor (call .contiguous() first)")
        if self.images.shape[0] != self.labels.shape[0]:
            raise ValueError(
                f"ImageSplit: {self.images.shape[0]} images but {self.labels.shape[0]} labels; expected equal counts"
            )

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __repr__(self) -> str:
        return f"ImageSplit(images={_describe(self.images)}, labels={_describe(self.labels)})"

    def select(self, indices: torch.Tensor | Sequence[int]) -> ImageSplit:
        """A new split holding the samples at `indices` (in that order)."""
        idx = as_index(indices, len(self))
        images = None if self.images is None else self.images.index_select(0, idx)
        return ImageSplit(images=images, labels=self.labels.index_select(0, idx))


# -----------------------------------------------------------------------------
# index helpers


def as_index(indices: torch.Tensor | Sequence[int], n: int) -> torch.Tensor:
    """`indices` into a sequence of length `n` as an int64 (K,) tensor, negative ones counted from the end."""
    idx = torch.as_tensor(indices, dtype=torch.int64).reshape(-1)
    if idx.numel() and (int(idx.min()) < -n or int(idx.max()) >= n):
        raise IndexError(f"select: indices must lie in [0, {n}), got range [{int(idx.min())}, {int(idx.max())}]")
    return torch.where(idx < 0, idx + n, idx)


def _check_labels(labels: torch.Tensor, where: str) -> None:
    if not isinstance(labels, torch.Tensor) or labels.dim() != 1 or labels.dtype.is_floating_point:
        raise ValueError(f"{where}: expected labels as a 1-D integer tensor, got {_describe(labels)}")


def stratified_split(labels: torch.Tensor, val_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split indices into (train, val), taking round(n_c * val_fraction) samples of every class c for val.

    Seeded and reproducible. A class with at least two samples keeps at least one on each side.
    Both index tensors are sorted ascending.
    """
    _check_labels(labels, "stratified_split")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"stratified_split: val_fraction must be in [0, 1), got {val_fraction}")
    gen = torch.Generator().manual_seed(seed)
    train_parts, val_parts = [], []
    for c in torch.unique(labels).tolist():
        members = (labels == c).nonzero().flatten()
        members = members[torch.randperm(members.numel(), generator=gen)]
        n = members.numel()
        n_val = round(n * val_fraction)
        if val_fraction > 0 and n >= 2:
            n_val = min(max(n_val, 1), n - 1)
        val_parts.append(members[:n_val])
        train_parts.append(members[n_val:])
    empty = torch.empty(0, dtype=torch.int64)
    train_idx = torch.cat(train_parts).sort().values if train_parts else empty
    val_idx = torch.cat(val_parts).sort().values if val_parts else empty
    return train_idx, val_idx


def subset_per_class(labels: torch.Tensor, samples_per_class: int, seed: int) -> torch.Tensor:
    """Indices of `samples_per_class` randomly chosen samples of every class present in `labels` (seeded).

    Raises ConfigError (a ValueError) if a class has fewer samples than requested. The result is sorted ascending.
    """
    _check_labels(labels, "subset_per_class")
    if not isinstance(samples_per_class, int) or samples_per_class < 1:
        raise ConfigError(f"subset_per_class: samples_per_class must be a positive int, got {samples_per_class!r}")
    classes, counts = torch.unique(labels, return_counts=True)
    if counts.numel() and int(counts.min()) < samples_per_class:
        smallest = int(counts.min())
        raise ConfigError(f"samples_per_class is {samples_per_class} but class {int(classes[counts.argmin()])} has "
                          f"{smallest} samples (the fewest); ask for at most {smallest}")
    gen = torch.Generator().manual_seed(seed)
    parts = []
    for c in classes.tolist():
        members = (labels == c).nonzero().flatten()
        parts.append(members[torch.randperm(members.numel(), generator=gen)[:samples_per_class]])
    if not parts:
        return torch.empty(0, dtype=torch.int64)
    return torch.cat(parts).sort().values


# -----------------------------------------------------------------------------
# image tensor helpers


def parse_image_size(image_size: int | tuple[int, int] | Sequence[int] | None) -> tuple[int, int] | None:
    """Normalize an int or (H, W) pair to (H, W); None stays None."""
    if image_size is None:
        return None
    size = as_size_pair(image_size)
    if size is None:
        raise ConfigError(f"image_size: expected an int or an (H, W) pair of ints, got {image_size!r}")
    if min(size) < 1:
        raise ConfigError(f"image_size: expected positive sizes, got {image_size!r}")
    return size


def channel_mean_std(
    images: torch.Tensor, chunk_elements: int = 1 << 22
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) std of uint8 (N, C, H, W) images, in [0, 1] pixel units.

    Sums are accumulated in float64 over chunks of about `chunk_elements` values, so memory stays small.
    """
    if images.dim() != 4 or images.shape[0] == 0:
        raise ValueError(f"channel_mean_std: expected a non-empty (N, C, H, W) tensor, got {_describe(images)}")
    n, c, h, w = images.shape
    rows = max(1, chunk_elements // (c * h * w))
    total = torch.zeros(c, dtype=torch.float64)
    total_sq = torch.zeros(c, dtype=torch.float64)
    for start in range(0, n, rows):
        chunk = images[start : start + rows].to(torch.float64)
        total += chunk.sum(dim=(0, 2, 3))
        total_sq += chunk.square().sum(dim=(0, 2, 3))
    count = n * h * w
    mean = total / count
    var = (total_sq / count - mean.square()).clamp_min(0.0)
    return tuple((mean / 255.0).tolist()), tuple((var.sqrt() / 255.0).tolist())


def resize_images(images: torch.Tensor, size: tuple[int, int], chunk: int = 256) -> torch.Tensor:
    """Resize uint8 (N, C, H, W) images to `size` = (H, W) (bicubic, antialiased), returning uint8."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    out = torch.empty((images.shape[0], images.shape[1], *size), dtype=torch.uint8)
    for start in range(0, images.shape[0], chunk):
        x = images[start : start + chunk].to(torch.float32)
        y = F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True)
        out[start : start + chunk] = y.round_().clamp_(0, 255).to(torch.uint8)
    return out
