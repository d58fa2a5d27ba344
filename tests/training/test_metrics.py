"""Evaluation metrics on hand-made logits: top-1 / top-5, loss, confusion matrix, per-class accuracy."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from compact_transformers.training.metrics import (
    EvalResult,
    accuracy_counts,
    evaluate,
    predict_logits,
    result_from_counts,
)

# 6 classes, 4 samples; the rank of the true class among the logits is noted per row.
LOGITS = torch.tensor(
    [
        [5.0, 4.0, 3.0, 2.0, 1.0, 0.0],  # true 0: rank 1
        [5.0, 4.0, 3.0, 2.0, 1.0, 0.0],  # true 4: rank 5 (top-5 hit, top-1 miss, predicted 0)
        [0.0, 1.0, 2.0, 3.0, 4.0, 5.0],  # true 0: rank 6 (miss, predicted 5)
        [0.0, 9.0, 0.0, 0.0, 0.0, 1.0],  # true 1: rank 1
    ]
)
LABELS = torch.tensor([0, 4, 0, 1])


def test_counts_on_hand_made_logits() -> None:
    counts = accuracy_counts(LOGITS, LABELS, num_classes=6)
    assert counts["top1"].item() == 2
    assert counts["top5"].item() == 3
    assert counts["count"].item() == 4
    expected = torch.zeros(6, 6)
    expected[0, 0] = 1  # true 0 -> predicted 0
    expected[4, 0] = 1  # true 4 -> predicted 0
    expected[0, 5] = 1  # true 0 -> predicted 5
    expected[1, 1] = 1
    assert torch.equal(counts["confusion"], expected.double())
    # summed cross-entropy: -log softmax at the true class, row by row
    by_hand = 0.0
    for row, label in zip(LOGITS.tolist(), LABELS.tolist()):
        by_hand += math.log(sum(math.exp(v) for v in row)) - row[label]
    assert counts["loss"].item() == pytest.approx(by_hand, rel=1e-6)


def test_result_percentages_and_per_class_accuracy() -> None:
    result = result_from_counts(accuracy_counts(LOGITS, LABELS, num_classes=6))
    assert isinstance(result, EvalResult)
    assert (result.top1, result.top5, result.count) == (50.0, 75.0, 4)
    # class 0: 1 of 2, class 1: 1 of 1, class 4: 0 of 1, classes without samples: 0
    assert result.per_class_accuracy() == [50.0, 100.0, 0.0, 0.0, 0.0, 0.0]
    assert result.confusion.dtype == torch.int64 and result.confusion.sum().item() == 4
    summary = result.summary()
    assert set(summary) == {"loss", "top1", "top5", "count"} and summary["top1"] == 50.0


def test_top5_with_fewer_than_five_classes_is_all_hits() -> None:
    logits = torch.tensor([[0.0, 1.0, 2.0], [3.0, 0.0, 1.0]])
    result = result_from_counts(accuracy_counts(logits, torch.tensor([0, 1]), num_classes=3))
    assert result.top1 == 0.0 and result.top5 == 100.0


def test_counts_sum_like_a_single_pass() -> None:
    """What DDP does: counts of two shards added together equal the counts of the whole."""
    whole = accuracy_counts(LOGITS, LABELS, num_classes=6)
    parts = [accuracy_counts(LOGITS[s], LABELS[s], num_classes=6) for s in (slice(0, None, 2), slice(1, None, 2))]
    for key, value in whole.items():
        assert torch.allclose(parts[0][key] + parts[1][key], value), key


class FixedLogits(nn.Module):
    """Logits read from the first pixel of each (already transformed) image: row i predicts class i % K."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        index = images[:, 0, 0, 0].long() % self.num_classes
        return nn.functional.one_hot(index, self.num_classes).float() * 10 + self.dummy


def test_predict_logits_batches_and_restores_training_mode() -> None:
    model = FixedLogits(num_classes=4).train()
    images = torch.arange(7, dtype=torch.uint8).reshape(7, 1, 1, 1).expand(7, 1, 2, 2).contiguous()
    modes: list[bool] = []
    model.register_forward_pre_hook(lambda module, _: modes.append(module.training))
    logits = predict_logits(model, images, nn.Identity(), batch_size=3)
    assert logits.shape == (7, 4) and logits.dtype == torch.float32
    assert modes == [False, False, False]  # 3 batches, in eval mode
    assert model.training
    assert logits.argmax(dim=1).tolist() == [0, 1, 2, 3, 0, 1, 2]
    assert predict_logits(model, images[:0], nn.Identity()).numel() == 0


def test_evaluate_end_to_end() -> None:
    model = FixedLogits(num_classes=4)
    images = torch.arange(8, dtype=torch.uint8).reshape(8, 1, 1, 1)
    labels = torch.tensor([0, 1, 2, 3, 1, 1, 1, 1])  # the last 4 predict 0, 1, 2, 3: one hit
    result = evaluate(model, images, labels, nn.Identity(), num_classes=4, batch_size=5)
    assert result.count == 8 and result.top1 == 62.5
    assert result.per_class_accuracy() == [100.0, 40.0, 100.0, 100.0]
    assert result.confusion[1].tolist() == [1, 2, 1, 1]


class LeftColumnLogits(nn.Module):
    """Logits read from the left image column, so a mirror image gives different logits."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images[:, 0, :, 0].float()


def test_flip_tta_averages_the_logits_of_the_image_and_its_mirror() -> None:
    images = torch.randint(0, 255, (5, 1, 4, 3), dtype=torch.uint8)
    model = LeftColumnLogits()
    plain = predict_logits(model, images, nn.Identity(), batch_size=2)
    mirrored = predict_logits(model, images.flip(-1), nn.Identity(), batch_size=2)
    both = predict_logits(model, images, nn.Identity(), batch_size=2, flip_tta=True)
    assert not torch.equal(plain, mirrored)
    assert torch.allclose(both, (plain + mirrored) / 2)
    # the averaged prediction no longer depends on which way round the image is
    assert torch.allclose(predict_logits(model, images.flip(-1), nn.Identity(), flip_tta=True), both)


class CornerLogits(nn.Module):
    """Logits read from the image's top-left 2x2 corner: a shifted or mirrored image gives other logits."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images[:, 0, :2, :2].flatten(1).float()


def test_shift_tta_adds_the_shifted_views_with_half_the_weight() -> None:
    images = torch.randint(0, 255, (5, 1, 6, 5), dtype=torch.uint8)
    model = CornerLogits()

    def logits_of(x: torch.Tensor) -> torch.Tensor:
        return predict_logits(model, x, nn.Identity(), batch_size=2)

    padded = torch.nn.functional.pad(images.float(), (1, 1, 1, 1), mode="reflect")
    down_right, up_left = padded[..., :6, :5], padded[..., 2:, 2:]
    expected = 0.5 * logits_of(images) + 0.25 * logits_of(down_right) + 0.25 * logits_of(up_left)
    shifted = predict_logits(model, images, nn.Identity(), batch_size=2, shift_tta=1)
    assert torch.allclose(shifted, expected) and not torch.allclose(shifted, logits_of(images))
    both = predict_logits(model, images, nn.Identity(), batch_size=2, flip_tta=True, shift_tta=1)
    mirrored = predict_logits(model, images.flip(-1), nn.Identity(), batch_size=2, shift_tta=1)
    assert torch.allclose(both, (shifted + mirrored) / 2)
