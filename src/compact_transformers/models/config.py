"""What the vision and text model configs share: JSON round trip and copies with changes."""

from __future__ import annotations

import dataclasses
from typing import TypeVar

ConfigT = TypeVar("ConfigT", bound="ModelConfig")


class ModelConfig:
    """Mixin for the model config dataclasses; lists stand in for tuples in ``to_dict`` (JSON-ready)."""

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        return {key: list(value) if isinstance(value, tuple) else value for key, value in data.items()}

    @classmethod
    def from_dict(cls: type[ConfigT], data: dict) -> ConfigT:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} keys {unknown}; known keys: {sorted(known)}")
        return cls(**data)

    def replace(self: ConfigT, **changes: object) -> ConfigT:
        return dataclasses.replace(self, **changes)
