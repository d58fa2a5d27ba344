import numpy as np
import pytest
import torch

from compact_transformers.data import (
    ImageDataset,
    ImageSplit,
    channel_mean_std,
    resize_images,
    stratified_split,
    subset_per_class,
)


def _labels(counts: list[int]) -> torch.Tensor:
    return torch.cat([torch.full((n,), c, dtype=torch.int64) for c, n in enumerate(counts)])


def test_image_split_validates_dtypes_and_shapes():
    ImageSplit(images=torch.zeros(3, 1, 4, 4, dtype=torch.uint8), labels=torch.zeros(3, dtype=torch.int64))
    with pytest.raises(ValueError, match="uint8"):
        ImageSplit(images=torch.zeros(3, 1, 4, 4), labels=torch.zeros(3, dtype=torch.int64))
    with pytest.raises(ValueError, match="int64"):
        ImageSplit(images=torch.zeros(3, 1, 4, 4, dtype=torch.uint8), labels=torch.zeros(3, dtype=torch.int32))
    with pytest.raises(ValueError, match="3 images but 2 labels"):
        ImageSplit(images=torch.zeros(3, 1, 4, 4, dtype=torch.uint8), labels=torch.zeros(2, dtype=torch.int64))
    with pytest.raises(ValueError, match="contiguous"):
        ImageSplit(images=torch.zeros(3, 4, 4, 3, dtype=torch.uint8).permute(0, 3, 1, 2),
                   labels=torch.zeros(3, dtype=torch.int64))  # fmt: skip


def test_select_picks_matching_images_and_labels():
    images = torch.arange(5, dtype=torch.uint8).view(5, 1, 1, 1).expand(5, 3, 2, 2).contiguous()
    split = ImageSplit(images=images, labels=torch.arange(5, dtype=torch.int64) * 10)
    sub = split.select([4, 1])
    assert sub.labels.tolist() == [40, 10]
    assert sub.images[:, 0, 0, 0].tolist() == [4, 1]
    assert sub.images.is_contiguous() and len(sub) == 2
    with pytest.raises(IndexError):
        split.select([5])
    assert "uint8[5, 3, 2, 2]" in repr(split)


def test_dataset_properties():
    split = ImageSplit(images=torch.zeros(4, 3, 6, 5, dtype=torch.uint8), labels=torch.zeros(4, dtype=torch.int64))
    ds = ImageDataset(name="x", train=split, val=split, test=None, classes=["a", "b"], mean=(0.5,) * 3, std=(0.2,) * 3)
    assert (ds.num_classes, ds.in_chans, ds.image_size) == (2, 3, (6, 5))


def test_subset_per_class_is_stratified_and_reproducible():
    labels = _labels([7, 12, 5])[torch.randperm(24, generator=torch.Generator().manual_seed(0))]
    a = subset_per_class(labels, 5, seed=3)
    assert torch.equal(a, subset_per_class(labels, 5, seed=3))
    assert torch.bincount(labels[a]).tolist() == [5, 5, 5]
    assert a.unique().numel() == 15
    others = [subset_per_class(labels, 5, seed=s) for s in range(4, 8)]
    assert any(not torch.equal(a, o) for o in others)
    with pytest.raises(ValueError, match="class 2 has 5 samples"):
        subset_per_class(labels, 6, seed=0)
    with pytest.raises(ValueError, match="positive"):
        subset_per_class(labels, 0, seed=0)


def test_stratified_split_fractions_and_disjointness():
    labels = _labels([50, 30, 20, 1])
    train, val = stratified_split(labels, 0.2, seed=0)
    assert torch.bincount(labels[val], minlength=4).tolist() == [10, 6, 4, 0]
    assert sorted(torch.cat([train, val]).tolist()) == list(range(101))
    assert torch.equal(val, stratified_split(labels, 0.2, seed=0)[1])
    assert not torch.equal(val, stratified_split(labels, 0.2, seed=1)[1])
    with pytest.raises(ValueError, match="val_fraction"):
        stratified_split(labels, 1.0, seed=0)


def test_channel_mean_std_matches_direct_computation():
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (37, 3, 9, 11), dtype=torch.uint8, generator=gen)
    images[:, 1] //= 4  # make the channels differ
    mean, std = channel_mean_std(images, chunk_elements=500)  # many small chunks
    x = images.double().permute(1, 0, 2, 3).reshape(3, -1) / 255
    np.testing.assert_allclose(mean, x.mean(1).numpy(), rtol=1e-12)
    np.testing.assert_allclose(std, x.std(1, unbiased=False).numpy(), rtol=1e-10)
    assert mean[1] < mean[0] / 2


def test_resize_images_keeps_constant_images_constant():
    images = torch.full((2, 3, 8, 8), 77, dtype=torch.uint8)
    out = resize_images(images, (20, 16))
    assert out.shape == (2, 3, 20, 16) and out.dtype == torch.uint8
    assert (out == 77).all()
