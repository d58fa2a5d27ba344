"""Distributed glue: single-process no-ops, and a real 2-process gloo run of `cct train` under torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from compact_transformers.cli import main
from compact_transformers.training.distributed import (
    DistInfo,
    all_reduce_sum,
    any_rank,
    cleanup,
    from_rank0,
    gather_objects,
    setup_distributed,
)

TINY = ["--samples-per-class", "5", "--epochs", "2", "--batch-size", "8", "--quiet", "--device", "cpu"]


def test_single_process_without_torchrun(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    info = setup_distributed(torch.device("cpu"))
    assert info == DistInfo() and not info.enabled and info.is_main
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert setup_distributed(torch.device("cpu")) == DistInfo()
    assert not torch.distributed.is_initialized()


def test_single_process_reductions_are_no_ops() -> None:
    info = DistInfo()
    tensors = {"a": torch.tensor(2.0), "b": torch.arange(3.0)}
    out = all_reduce_sum(tensors, info)
    assert out is tensors and out["a"].item() == 2.0 and out["b"].tolist() == [0.0, 1.0, 2.0]
    assert any_rank(True, torch.device("cpu"), info) and not any_rank(False, torch.device("cpu"), info)
    assert from_rank0({"epochs": 3}, info) == {"epochs": 3}
    assert gather_objects("state", info) == ["state"]
    cleanup(info)


def test_rank_properties() -> None:
    worker = DistInfo(rank=1, world_size=2, local_rank=1)
    assert worker.enabled and not worker.is_main
    assert DistInfo(rank=0, world_size=2).is_main


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_two_process_gloo_training_matches_the_single_process_format(tmp_path: Path) -> None:
    ddp_output, single_output = tmp_path / "ddp", tmp_path / "single"
    env = {key: value for key, value in os.environ.items() if key not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        "-m", "compact_transformers.cli", "train", *TINY, "--output", str(ddp_output),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert "device cpu x2" in result.stderr  # really two processes, one log (rank 0's)
    assert result.stderr.count("run directory:") == 1

    runs = list(ddp_output.iterdir())
    assert len(runs) == 1, f"only rank 0 writes a run directory, got {runs}"
    ddp_run = runs[0]
    ddp_records = records(ddp_run)
    assert [r["epoch"] for r in ddp_records] == [1, 2]
    assert (ddp_run / "final.json").exists() and (ddp_run / "model").is_dir()
    state = torch.load(ddp_run / "checkpoints" / "last" / "state.pt", weights_only=True)
    assert state["world_size"] == 2 and isinstance(state["rng"], list) and len(state["rng"]) == 2
    # the global batch is 2 x 8 over 50 images: 3 steps of 16 images, all counted
    assert json.loads((ddp_run / "final.json").read_text())["val"]["count"] == 359

    assert main(["train", *TINY, "--output", str(single_output), "--name", "single"]) == 0
    single_records = records(single_output / "single")
    for ddp_record, single_record in zip(ddp_records, single_records, strict=True):
        assert ddp_record.keys() == single_record.keys()
        assert all(type(ddp_record[k]) is type(single_record[k]) for k in ddp_record)
