"""Model library: the ViT-Lite, CVT and CCT families for images and text, presets and checkpoints."""

from .complexity import Complexity, complexity, count_macs, count_parameters
from .presets import PAPER_TABLE, PRESETS, Preset, build_model, get_preset, list_models, resolve_name
from .stats import DATASET_STATS
from .text import TextCompactTransformer, TextConfig
from .vision import CompactTransformer, VisionConfig
from .weights import (
    CheckpointError,
    create_model,
    load_model,
    load_weights,
    read_state_dict,
    save_model,
)

__all__ = [
    "CheckpointError",
    "CompactTransformer",
    "Complexity",
    "DATASET_STATS",
    "PAPER_TABLE",
    "PRESETS",
    "Preset",
    "TextCompactTransformer",
    "TextConfig",
    "VisionConfig",
    "build_model",
    "complexity",
    "count_macs",
    "count_parameters",
    "create_model",
    "get_preset",
    "list_models",
    "load_model",
    "load_weights",
    "read_state_dict",
    "resolve_name",
    "save_model",
]
