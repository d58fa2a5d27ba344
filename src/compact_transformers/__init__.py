"""Compact Transformers: ViT-Lite, CVT and CCT for training transformers from scratch on small datasets."""

from .models import (
    CheckpointError,
    CompactTransformer,
    TextCompactTransformer,
    TextConfig,
    VisionConfig,
    create_model,
    list_models,
    load_model,
    save_model,
)

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "CompactTransformer",
    "TextCompactTransformer",
    "TextConfig",
    "VisionConfig",
    "create_model",
    "list_models",
    "load_model",
    "save_model",
]
