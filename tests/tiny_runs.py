"""Helpers shared by the training-run tests (training/test_loop, training/test_tracking, test_cli_text)."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import torch

from compact_transformers.training import step as step_module
from compact_transformers.training.losses import SoftTargetCrossEntropy
from compact_transformers.training.recipe import TrainConfig, apply_recipe

MODEL = "cct_2_3x2_32"


def tiny_config(output: Path, name: str, epochs: int = 2, **changes: object) -> TrainConfig:
    """The `cct train` digits recipe, shrunk: 5 images per class, 3 steps of 16 per epoch, on the CPU."""
    config = apply_recipe(TrainConfig(), "digits", epochs=epochs)
    return config.replace(model=MODEL, samples_per_class=5, batch_size=16, output=str(output), name=name,
                          quiet=True, device="cpu", **changes)  # fmt: skip


def interrupt_at_step(monkeypatch: pytest.MonkeyPatch, step: int) -> None:
    """Send SIGINT to this process during the `step`-th training step (1-based, counted over the run)."""
    calls = {"n": 0}

    class InterruptingLoss(SoftTargetCrossEntropy):
        def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            calls["n"] += 1
            if calls["n"] == step:
                signal.raise_signal(signal.SIGINT)
            return super().forward(logits, target)

    monkeypatch.setattr(step_module, "SoftTargetCrossEntropy", InterruptingLoss)


def read_records(run_dir: Path) -> list[dict]:
    """The run's metrics.jsonl, one dict per epoch."""
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
