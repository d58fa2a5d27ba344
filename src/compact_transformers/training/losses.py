"""Classification losses: soft-target CE (mixup/cutmix), label smoothing, DeiT-style hard distillation.

All losses compute in float32, so bf16/fp16 logits under autocast lose no precision here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _check_logits(logits: torch.Tensor) -> None:
    if logits.ndim != 2:
        raise ValueError(f"logits must be (batch, classes), got shape {tuple(logits.shape)}")


def _check_class_targets(logits: torch.Tensor, target: torch.Tensor) -> None:
    _check_logits(logits)
    if target.is_floating_point() or target.ndim != 1:
        raise ValueError(
            f"target must be integer class indices of shape (batch,), got {target.dtype} {tuple(target.shape)}; "
            "use SoftTargetCrossEntropy for probability rows"
        )
    if target.shape[0] != logits.shape[0]:
        raise ValueError(f"target has {target.shape[0]} rows but logits have {logits.shape[0]}")


class SoftTargetCrossEntropy(nn.Module):
    """Cross-entropy against probability rows (e.g. mixup/cutmix targets): mean_i sum_c -t_ic log p_ic."""

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        _check_logits(logits)
        if target.shape != logits.shape:
            raise ValueError(
                f"target must be probability rows shaped like the logits {tuple(logits.shape)}, "
                f"got {tuple(target.shape)}; use LabelSmoothingCrossEntropy for class indices"
            )
        log_probs = F.log_softmax(logits.float(), dim=-1)
        return torch.sum(-target.float() * log_probs, dim=-1).mean()


class LabelSmoothingCrossEntropy(nn.Module):
    """Cross-entropy against class indices with label smoothing: the target puts 1 - smoothing on the
    true class and spreads `smoothing` uniformly over all classes (the true class included)."""

    def __init__(self, smoothing: float = 0.1) -> None:
        super().__init__()
        if not 0.0 <= smoothing < 1.0:
            raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
        self.smoothing = smoothing

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        _check_class_targets(logits, target)
        return F.cross_entropy(logits.float(), target, label_smoothing=self.smoothing)

    def extra_repr(self) -> str:
        return f"smoothing={self.smoothing}"


class DistillationLoss(nn.Module):
    """DeiT hard distillation: (1 - alpha) * base(student, targets) + alpha * CE(student, argmax teacher).

    `targets` is whatever `base_loss` takes (class indices, or probability rows under mixup).
    """

    def __init__(self, base_loss: nn.Module, teacher_alpha: float) -> None:
        super().__init__()
        if not 0.0 <= teacher_alpha <= 1.0:
            raise ValueError(f"teacher_alpha must be in [0, 1], got {teacher_alpha}")
        self.base_loss = base_loss
        self.teacher_alpha = teacher_alpha

    def forward(
        self, student_logits: torch.Tensor, targets: torch.Tensor, teacher_logits: torch.Tensor
    ) -> torch.Tensor:
        _check_logits(student_logits)
        if teacher_logits.shape != student_logits.shape:
            raise ValueError(
                f"teacher logits {tuple(teacher_logits.shape)} must match student logits {tuple(student_logits.shape)}"
            )
        base = self.base_loss(student_logits, targets)
        teacher_labels = teacher_logits.detach().argmax(dim=-1)
        distill = F.cross_entropy(student_logits.float(), teacher_labels)
        return (1.0 - self.teacher_alpha) * base + self.teacher_alpha * distill

    def extra_repr(self) -> str:
        return f"teacher_alpha={self.teacher_alpha}"
