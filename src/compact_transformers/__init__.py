"""Compact Transformers: ViT-Lite, CVT and CCT for training transformers from scratch on small datasets.

The names below are imported on first use, so that ``cct`` starts (and handles signals) before torch loads.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

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

if TYPE_CHECKING:
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


def __getattr__(name: str) -> object:
    if name in __all__:
        return getattr(importlib.import_module(".models", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
