"""Config files: ours (TrainConfig field names) and the authors' timm-style training YAML files.

The authors trained with timm's ``train.py``; their configs use its option names. Those are translated
here: renamed options are mapped, options with no meaning here are logged and ignored, and options that
would change training if set are refused unless neutral.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .recipe import FIELD_NAMES, coerce_field, is_optional_field, unknown_key_message

logger = logging.getLogger(__name__)


# timm train.py options with a different name here: timm key -> our field.
_TIMM_RENAMED = {
    "data_dir": "data",
    "experiment": "name",
    "opt_eps": "eps",
    "opt_betas": "betas",
    "initial_checkpoint": "pretrained",
    "torchcompile": "compile",
    "distillation_alpha": "distill_alpha",
}
# timm options that would change training if set to something else than this (neutral) value.
_TIMM_UNSUPPORTED = {
    "vflip": 0,
    "jsd_loss": False,
    "bce_loss": False,
    "cutmix_minmax": None,
    "drop_block": None,
    "drop_connect": None,
    "layer_decay": None,
    "aug_repeats": 0,
    "aug_splits": 0,
    "no_aug": False,
    "lr_noise": None,
    "epoch_repeats": 0,
    "clip_mode": "norm",
    "decay_milestones": None,
    "warmup_prefix": False,
    "model_kwargs": {},
}
# timm options with no meaning here (data loading, logging, distributed training, other schedules).
_TIMM_IGNORED = (
    "crop_pct", "train_interpolation", "remode", "recount", "resplit", "train_split", "val_split",
    "dataset_download", "class_map", "gp", "input_size", "validation_batch_size", "channels_last",
    "torchscript", "fuser", "grad_checkpointing", "momentum", "lr_base_scale", "lr_noise_pct",
    "lr_noise_std", "lr_cycle_mul", "lr_cycle_decay", "lr_cycle_limit", "lr_k_decay", "decay_epochs",
    "decay_rate", "patience_epochs", "start_epoch", "color_jitter", "bce_target_thresh", "bn_momentum",
    "bn_eps", "sync_bn", "dist_bn", "split_bn", "model_ema_force_cpu", "worker_seeding", "log_interval",
    "recovery_interval", "checkpoint_hist", "save_images", "apex_amp", "native_amp", "amp_dtype",
    "no_ddp_bb", "pin_mem", "no_prefetcher", "eval_metric", "tta", "local_rank", "use_multi_epochs_loader",
    "log_wandb", "sched_on_updates", "no_resume_opt", "in_chans", "mixup_mode", "distillation_type",
    "input_img_mode", "train_num_samples", "val_num_samples", "synchronize_step", "head_init_scale",
    "head_init_bias", "train_crop_mode",
)  # fmt: skip
_TIMM_KEYS = tuple(_TIMM_RENAMED) + tuple(_TIMM_UNSUPPORTED) + _TIMM_IGNORED + ("lr_base", "lr_base_size")


def read_yaml(path: Path) -> Any:
    """The parsed content of a YAML file; a file that is not YAML (or not UTF-8 text) is a ConfigError naming
    ``file:line:column``."""
    import yaml

    data = path.read_bytes()
    try:
        return yaml.safe_load(data.decode("utf-8"))
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise ConfigError(f"{path}:{line}: not UTF-8 text ({error.reason}); expected a YAML file") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ConfigError(f"{where}: not valid YAML: {problem}") from None


def load_yaml_config(path: str | Path) -> dict[str, Any]:
    """Read a YAML file into a dict of TrainConfig field names (values converted to the field types).

    Accepts our own files (`yaml.safe_dump(config.to_dict())`) and the authors' timm-style files:
    timm names are mapped (`opt_eps` -> `eps`, `data_dir` -> `data`, `input_size` -> `img_size`, ...),
    timm options with no meaning here are logged and ignored, and a key that is neither raises ConfigError.
    As in timm, `lr` in a file is the rate for that file's `batch_size` unless it gives `lr_base_batch`.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}" + (" (it is a directory)" if path.is_dir() else ""))
    raw = read_yaml(path)
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of option names to values, got {type(raw).__name__}")

    where = str(path)
    out: dict[str, Any] = {}
    for key, value in raw.items():
        key = str(key).replace("-", "_")
        if key in FIELD_NAMES:
            if value is None and not is_optional_field(key):
                continue  # timm writes unset options as null
            out[key] = value
        elif key in _TIMM_RENAMED:
            if value in (None, "", False):
                continue  # timm's "not set"
            out.setdefault(_TIMM_RENAMED[key], value)
        elif key in ("lr_base", "lr_base_size"):
            pass  # handled below
        elif key == "input_size" and value is not None:  # timm: [channels, height, width]
            if not (isinstance(value, list) and len(value) == 3 and value[1] == value[2]):
                raise ConfigError(f"{where}: input_size must be [channels, size, size] (square), got {value!r}")
            out.setdefault("img_size", value[2])
        elif key == "mixup_mode":
            if value != "batch":
                raise ConfigError(f"{where}: mixup_mode {value!r} is not supported; only 'batch' is")
        elif key == "distillation_type":
            if value not in ("hard", "none", None):
                raise ConfigError(f"{where}: distillation_type {value!r} is not supported; only 'hard' is")
        elif key in _TIMM_UNSUPPORTED:
            if value != _TIMM_UNSUPPORTED[key]:
                logger.warning("%s: timm option %s=%r is not supported here and is ignored", where, key, value)
        elif key in _TIMM_IGNORED:
            logger.info("%s: timm option %s=%r has no meaning here; ignored", where, key, value)
        else:
            raise ConfigError(unknown_key_message(key, where=where, candidates=FIELD_NAMES + _TIMM_KEYS))

    # timm's `pretrained: True` downloads the weights of the named model; here `pretrained` is a file.
    if isinstance(out.get("pretrained"), bool):
        if out.pop("pretrained"):
            logger.warning(
                "%s: 'pretrained: True' (download weights) is not supported; pass --pretrained PATH", where
            )
    if "compile" in out and not isinstance(out["compile"], bool):
        out["compile"] = True  # timm's torchcompile names a backend
    # timm: without `lr`, the rate is lr_base for a batch of lr_base_size (default 256).
    if raw.get("lr") is None and raw.get("lr_base") is not None:
        out["lr"] = raw["lr_base"]
        out.setdefault("lr_base_batch", raw.get("lr_base_size") or 256)
    if "lr" in out and "batch_size" in out and "lr_base_batch" not in out:
        out["lr_base_batch"] = out["batch_size"]

    try:
        return {name: coerce_field(name, value) for name, value in out.items()}
    except ConfigError as error:
        raise ConfigError(f"{where}: {error}") from None
