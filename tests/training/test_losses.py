from __future__ import annotations

import math

import pytest
import torch

from compact_transformers.training.losses import DistillationLoss, LabelSmoothingCrossEntropy, SoftTargetCrossEntropy


def hand_log_softmax(row: list[float]) -> list[float]:
    log_z = math.log(sum(math.exp(v) for v in row))
    return [v - log_z for v in row]


LOGITS = [[2.0, -1.0, 0.5], [0.0, 1.0, 3.0]]
LABELS = [0, 1]


def test_soft_target_ce_matches_hand_computation():
    target = [[0.7, 0.2, 0.1], [0.0, 0.5, 0.5]]
    expected = sum(
        -sum(t * lp for t, lp in zip(t_row, hand_log_softmax(row))) for row, t_row in zip(LOGITS, target)
    ) / len(LOGITS)
    loss = SoftTargetCrossEntropy()(torch.tensor(LOGITS), torch.tensor(target))
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_label_smoothing_matches_hand_computation():
    s, classes = 0.1, 3
    expected = 0.0
    for row, label in zip(LOGITS, LABELS):
        lp = hand_log_softmax(row)
        expected += (1 - s) * -lp[label] + s * -sum(lp) / classes
    expected /= len(LOGITS)
    loss = LabelSmoothingCrossEntropy(smoothing=s)(torch.tensor(LOGITS), torch.tensor(LABELS))
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_label_smoothing_equals_soft_ce_on_smoothed_one_hot():
    torch.manual_seed(0)
    logits, labels, s = torch.randn(6, 5), torch.randint(0, 5, (6,)), 0.2
    smoothed = torch.nn.functional.one_hot(labels, 5).float() * (1 - s) + s / 5
    assert torch.allclose(LabelSmoothingCrossEntropy(s)(logits, labels), SoftTargetCrossEntropy()(logits, smoothed))
    assert LabelSmoothingCrossEntropy(0.0)(logits, labels).item() == pytest.approx(
        -torch.log_softmax(logits, -1)[torch.arange(6), labels].mean().item(), rel=1e-6
    )


def test_distillation_matches_formula_and_ignores_teacher_gradient():
    student = torch.tensor(LOGITS, requires_grad=True)
    teacher = torch.tensor([[0.0, 0.0, 5.0], [9.0, 1.0, 0.0]], requires_grad=True)  # hard labels 2, 0
    alpha, s = 0.3, 0.1
    loss = DistillationLoss(LabelSmoothingCrossEntropy(s), teacher_alpha=alpha)(student, torch.tensor(LABELS), teacher)
    base = LabelSmoothingCrossEntropy(s)(torch.tensor(LOGITS), torch.tensor(LABELS)).item()
    distill = -(hand_log_softmax(LOGITS[0])[2] + hand_log_softmax(LOGITS[1])[0]) / 2
    assert loss.item() == pytest.approx((1 - alpha) * base + alpha * distill, rel=1e-6)
    loss.backward()
    assert teacher.grad is None and student.grad is not None


def test_distillation_with_soft_targets_and_alpha_zero():
    torch.manual_seed(0)
    logits, targets = torch.randn(4, 3), torch.softmax(torch.randn(4, 3), -1)
    loss = DistillationLoss(SoftTargetCrossEntropy(), teacher_alpha=0.0)(logits, targets, torch.randn(4, 3))
    assert torch.allclose(loss, SoftTargetCrossEntropy()(logits, targets))


def test_bf16_logits_give_float32_loss():
    logits = torch.tensor(LOGITS, dtype=torch.bfloat16)
    loss = LabelSmoothingCrossEntropy(0.1)(logits, torch.tensor(LABELS))
    assert loss.dtype == torch.float32


def test_bad_inputs():
    logits = torch.tensor(LOGITS)
    with pytest.raises(ValueError, match="probability rows shaped like the logits"):
        SoftTargetCrossEntropy()(logits, torch.tensor(LABELS))
    with pytest.raises(ValueError, match="integer class indices"):
        LabelSmoothingCrossEntropy(0.1)(logits, torch.rand(2, 3))
    with pytest.raises(ValueError, match="smoothing must be in"):
        LabelSmoothingCrossEntropy(1.0)
    with pytest.raises(ValueError, match="teacher logits"):
        DistillationLoss(SoftTargetCrossEntropy(), 0.5)(logits, torch.rand(2, 3), torch.rand(2, 4))
    with pytest.raises(ValueError, match="teacher_alpha"):
        DistillationLoss(SoftTargetCrossEntropy(), 1.5)
