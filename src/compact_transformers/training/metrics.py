"""Evaluation: top-1 / top-5, loss, per-class accuracy and the confusion matrix."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..augment import tta_logits
from .runtime import prepare_input
from .step import trim_to_longest


@dataclass
class EvalResult:
    loss: float
    top1: float  # percent
    top5: float  # percent
    count: int
    confusion: torch.Tensor  # (K, K) int64, rows = true class, columns = predicted

    def per_class_accuracy(self) -> list[float]:
        totals = self.confusion.sum(dim=1).clamp(min=1)
        return (100.0 * self.confusion.diag() / totals).tolist()

    def summary(self) -> dict:
        return {"loss": self.loss, "top1": self.top1, "top5": self.top5, "count": self.count}


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    images: torch.Tensor,
    transform: nn.Module,
    batch_size: int = 512,
    autocast: torch.dtype | None = None,
    flip_tta: bool = False,
    shift_tta: int = 0,
) -> torch.Tensor:
    """Logits (N, K) float32 for uint8 images (N, C, H, W) already on the model's device; with
    ``flip_tta`` / ``shift_tta`` averaged over the test-time views of :func:`tta_logits`."""
    was_training = model.training
    model.eval()
    outputs = []
    try:
        for start in range(0, images.shape[0], batch_size):
            batch = prepare_input(transform(images[start : start + batch_size]))
            with torch.no_grad(), torch.autocast(images.device.type, dtype=autocast, enabled=autocast is not None):
                outputs.append(tta_logits(model, batch, flip_tta, shift_tta))
    finally:
        model.train(was_training)
    return torch.cat(outputs) if outputs else torch.empty(0)


@torch.no_grad()
def predict_text_logits(model: nn.Module, ids: torch.Tensor, lengths: torch.Tensor, batch_size: int = 512,
                        autocast: torch.dtype | None = None) -> torch.Tensor:
    """Logits (N, K) float32 of right-padded token ids (N, L) with their lengths, on the model's device.
    Texts are batched by length (each batch cut to its longest text) and returned in their own order."""
    was_training = model.training
    model.eval()
    host_lengths = lengths.cpu()  # one read from the device: each batch's longest text is then known here
    order = host_lengths.argsort()
    outputs = torch.empty(len(lengths), model.config.num_classes, device=ids.device)
    try:
        for start in range(0, len(order), batch_size):
            index = order[start : start + batch_size]
            longest = int(host_lengths[index].max())
            index = index.to(ids.device)
            rows, mask = trim_to_longest(ids[index], lengths[index], longest)
            with torch.autocast(ids.device.type, dtype=autocast, enabled=autocast is not None):
                outputs[index] = model(rows, mask).float()
    finally:
        model.train(was_training)
    return outputs


def accuracy_counts(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> dict[str, torch.Tensor]:
    """Sums that can be all-reduced across processes: loss, top-1/top-5 hits, count, confusion."""
    k = min(5, logits.shape[1])
    top = logits.topk(k, dim=1).indices
    hits = top == labels[:, None]
    confusion = torch.bincount(labels * num_classes + top[:, 0], minlength=num_classes * num_classes)
    return {
        "loss": F.cross_entropy(logits, labels, reduction="sum").double(),
        "top1": hits[:, 0].sum().double(),
        "top5": hits.any(dim=1).sum().double(),
        "count": torch.tensor(float(labels.shape[0]), dtype=torch.float64, device=labels.device),
        "confusion": confusion.reshape(num_classes, num_classes).double(),
    }


def result_from_counts(counts: dict[str, torch.Tensor]) -> EvalResult:
    count = max(int(counts["count"].item()), 1)
    return EvalResult(
        loss=counts["loss"].item() / count,
        top1=100.0 * counts["top1"].item() / count,
        top5=100.0 * counts["top5"].item() / count,
        count=int(counts["count"].item()),
        confusion=counts["confusion"].round().long().cpu(),
    )


def evaluate(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    transform: nn.Module,
    num_classes: int,
    batch_size: int = 512,
    autocast: torch.dtype | None = None,
    flip_tta: bool = False,
    shift_tta: int = 0,
) -> EvalResult:
    logits = predict_logits(model, images, transform, batch_size=batch_size, autocast=autocast, flip_tta=flip_tta,
                            shift_tta=shift_tta)
    return result_from_counts(accuracy_counts(logits, labels.to(logits.device), num_classes))


def evaluate_text(model: nn.Module, ids: torch.Tensor, lengths: torch.Tensor, labels: torch.Tensor, num_classes: int,
                  batch_size: int = 512, autocast: torch.dtype | None = None) -> EvalResult:
    """:func:`evaluate` for right-padded token ids with their lengths."""
    logits = predict_text_logits(model, ids, lengths, batch_size=batch_size, autocast=autocast)
    return result_from_counts(accuracy_counts(logits, labels.to(logits.device), num_classes))
