"""The run directory's own files: its name, the resolved ``config.yaml`` and ``metrics.jsonl``."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

from ..errors import CheckpointError
from ..fileio import atomic_write_text
from .recipe import TrainConfig

METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.yaml"
FINAL_FILE = "final.json"
_RETIRED_FIELDS = ("resume",)  # in config.yaml files of older runs; ignored when read back


def new_run_dir(config: TrainConfig) -> Path:
    """``output/name`` (default name: model-dataset-time), with a suffix if it exists: never reuse a run."""
    base = Path(config.output)
    dataset = config.dataset or ("digits" if config.data is None else Path(config.data).name)
    model = re.sub(r"[^A-Za-z0-9_.-]+", "_", config.model)  # aliases such as CCT-7/3x1
    name = config.name or f"{model}-{dataset}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir, suffix = base / name, 1
    while run_dir.exists():
        suffix += 1
        run_dir = base / f"{name}-{suffix}"
    return run_dir


def write_run_config(run_dir: Path, config: TrainConfig) -> None:
    import yaml

    atomic_write_text(run_dir / CONFIG_FILE, yaml.safe_dump(config.to_dict(), sort_keys=False))


def load_run_config(run_dir: Path) -> TrainConfig:
    """The resolved config saved in a run directory."""
    import yaml

    path = Path(run_dir) / CONFIG_FILE
    if not path.exists():
        raise CheckpointError(f"{run_dir} is not a run directory: {CONFIG_FILE} is missing")
    saved = yaml.safe_load(path.read_text())
    return TrainConfig.from_dict({k: v for k, v in saved.items() if k not in _RETIRED_FIELDS})


def read_history(run_dir: Path) -> list[dict]:
    """The epoch records of ``metrics.jsonl`` (none if the file does not exist)."""
    path = run_dir / METRICS_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def rewrite_history(run_dir: Path, history: list[dict]) -> None:
    atomic_write_text(run_dir / METRICS_FILE, "".join(json.dumps(r) + "\n" for r in history))


def append_history(run_dir: Path, record: dict) -> None:
    with open(run_dir / METRICS_FILE, "a") as handle:
        handle.write(json.dumps(record) + "\n")
