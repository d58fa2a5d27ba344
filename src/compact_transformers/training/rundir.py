"""The run directory's own files: its name, the resolved ``config.yaml`` and ``metrics.jsonl``."""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path

from ..errors import CheckpointError, ConfigError
from ..fileio import atomic_write_text
from .recipe import TrainConfig, check_field_names
from .yaml_config import read_yaml

METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.yaml"
FINAL_FILE = "final.json"
_RETIRED_FIELDS = ("resume",)  # in config.yaml files of older runs; ignored when read back
_ADDED_FIELDS = {"length_bucket": 1}  # what runs saved before a field existed did, so that they resume exactly


def new_run_dir(config: TrainConfig) -> Path:
    """``output/name`` (default name: model-dataset-time), with a suffix if it exists: never reuse a run."""
    base = Path(config.output)
    dataset = config.dataset or ("digits" if config.data is None else Path(config.data).name)
    model = re.sub(r"[^A-Za-z0-9_.-]+", "_", config.model)  # aliases such as CCT-7/3x1
    if config.name is not None:
        check_run_name(config.name)
    name = config.name or f"{model}-{dataset}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir, suffix = base / name, 1
    while run_dir.exists():
        suffix += 1
        run_dir = base / f"{name}-{suffix}"
    return run_dir


def check_run_name(name: str) -> None:
    """A run name is one path component inside ``--output``: no separators, not ``.`` or ``..``."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise ConfigError(f"--name {name!r}: a run name must be a single folder name (no '/', not '.' or '..'); "
                          "use --output to choose where runs go")


def check_output_folder(output: str) -> None:
    """``--output`` is a folder, or is made as one: not an existing file."""
    path = Path(output)
    for parent in (path, *path.parents):
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(f"--output {output}: {parent} is a file; expected a folder for the run directories")
            return


def write_run_config(run_dir: Path, config: TrainConfig) -> None:
    import yaml

    atomic_write_text(run_dir / CONFIG_FILE, yaml.safe_dump(config.to_dict(), sort_keys=False))


def load_run_config(run_dir: Path) -> TrainConfig:
    """The resolved config saved in a run directory."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{run_dir} is not a run directory: {CONFIG_FILE} is missing")
    try:
        saved = read_yaml(path)
        if not isinstance(saved, dict):
            raise ConfigError(f"expected a mapping of settings, got {type(saved).__name__}")
        saved = {k: v for k, v in saved.items() if k not in _RETIRED_FIELDS}
        saved = {**_ADDED_FIELDS, **saved}
        check_field_names(saved, where=str(path))
        return TrainConfig.from_dict(saved)
    except ConfigError as error:  # a damaged run config: the run cannot be resumed or evaluated as it was
        message = str(error) if str(path) in str(error) else f"{path}: {error}"
        raise CheckpointError(message) from None


def read_history(run_dir: Path) -> list[dict]:
    """The epoch records of ``metrics.jsonl`` (none if the file does not exist)."""
    path = run_dir / METRICS_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def to_json(value: object, indent: int | None = None) -> str:
    """Strict JSON: a non-finite number (a diverged loss) is written as null, never as a bare ``NaN``."""
    return json.dumps(_finite(value), indent=indent, allow_nan=False)


def _finite(value: object) -> object:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


def rewrite_history(run_dir: Path, history: list[dict]) -> None:
    atomic_write_text(run_dir / METRICS_FILE, "".join(to_json(r) + "\n" for r in history))


def append_history(run_dir: Path, record: dict) -> None:
    with open(run_dir / METRICS_FILE, "a") as handle:
        handle.write(to_json(record) + "\n")


# Settings a model card shows: how the model was trained, not where the files were on the trainer's disk.
_CARD_RECIPE_FIELDS = (
    "model", "dataset", "img_size", "seq_len", "epochs", "batch_size", "lr", "min_lr", "warmup_epochs",
    "cooldown_epochs", "sched", "opt", "weight_decay", "smoothing", "clip_grad", "mixup", "cutmix", "aa",
    "reprob", "hflip", "drop_path", "drop", "attn_drop", "word_dropout", "train_embeddings", "model_ema",
    "seed", "time_limit", "val_fraction",
)  # fmt: skip


def run_card_info(run_dir: Path):
    """A model card's dataset, results and recipe, from a finished (or checkpointed) run directory."""
    from ..models.hub import CardInfo

    run_dir = Path(run_dir)
    config = load_run_config(run_dir)
    metrics: dict[str, float] = {}
    final_path = run_dir / FINAL_FILE
    if final_path.exists():
        final = json.loads(final_path.read_text())
        metrics = {split: final[split]["top1"] for split in ("val", "test") if isinstance(final.get(split), dict)}
    recipe = config.to_dict()
    return CardInfo(dataset=config.dataset or (Path(config.data).name if config.data else "digits"),
                    metrics=metrics, recipe={key: recipe.get(key) for key in _CARD_RECIPE_FIELDS})
