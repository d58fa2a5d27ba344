"""Training curves and confusion matrices as PNG (matplotlib is an optional extra)."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from ..fileio import atomic_write

logger = logging.getLogger(__name__)


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is not installed: no plots (pip install 'compact-transformers[plot]')")
        return None
    return plt


def plot_curves(history: list[dict], path: Path) -> Path | None:
    """Loss, accuracy and learning rate per epoch from the run's metrics records."""
    plt = _pyplot()
    if plt is None or not history:
        return None
    epochs = [record["epoch"] for record in history]
    figure, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    axes[0].plot(epochs, [r["train_loss"] for r in history], label="train")
    if all("val_loss" in r for r in history):
        axes[0].plot(epochs, [r["val_loss"] for r in history], label="val")
    axes[0].set_title("loss")
    if all("train_top1" in r for r in history):
        axes[1].plot(epochs, [r["train_top1"] for r in history], label="train (augmented)")
    if all("val_top1" in r for r in history):
        axes[1].plot(epochs, [r["val_top1"] for r in history], label="val")
    axes[1].set_title("top-1 accuracy (%)")
    axes[2].plot(epochs, [r["lr"] for r in history])
    axes[2].set_title("learning rate")
    for axis in axes:
        axis.set_xlabel("epoch")
        axis.grid(alpha=0.3)
    axes[0].legend()
    axes[1].legend()
    figure.tight_layout()
    atomic_write(path, lambda tmp: figure.savefig(tmp, dpi=110, format="png"))  # a kill keeps the old one
    plt.close(figure)
    return path


def plot_confusion(confusion: torch.Tensor, classes: list[str], path: Path, title: str = "") -> Path | None:
    plt = _pyplot()
    if plt is None:
        return None
    k = confusion.shape[0]
    size = min(4 + 0.35 * k, 24)
    figure, axis = plt.subplots(figsize=(size, size))
    normalised = confusion.double() / confusion.sum(dim=1, keepdim=True).clamp(min=1)
    image = axis.imshow(normalised.numpy(), cmap="Blues", vmin=0, vmax=1)
    if k <= 30:
        axis.set_xticks(range(k), classes, rotation=90)
        axis.set_yticks(range(k), classes)
        for i in range(k):
            for j in range(k):
                if confusion[i, j]:
                    colour = "white" if normalised[i, j] > 0.5 else "black"
                    axis.text(j, i, int(confusion[i, j]), ha="center", va="center", fontsize=7, color=colour)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    axis.set_title(title)
    figure.colorbar(image, fraction=0.046)
    figure.tight_layout()
    atomic_write(path, lambda tmp: figure.savefig(tmp, dpi=110, format="png"))
    plt.close(figure)
    return path
