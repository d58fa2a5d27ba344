"""Training checkpoints: a directory per checkpoint, replaced atomically.

``<run>/checkpoints/last/`` and ``.../best/`` each hold ``model.safetensors`` + ``config.json`` (loadable by
``load_model``) and ``state.pt`` (optimizer, schedule, scaler, EMA, RNG state, progress), read back with
``torch.load(weights_only=True)``. A new checkpoint is written to a temporary directory and swapped in with
renames, so a run killed at any moment leaves the previous checkpoint intact.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..models.weights import CheckpointError, save_model

STATE_FILE = "state.pt"


def rng_state() -> dict:
    state = {
        "torch": torch.get_rng_state(),
        "numpy": torch.from_numpy(np.frombuffer(np.random.get_state()[1].tobytes(), dtype=np.uint8).copy()),
        "numpy_pos": int(np.random.get_state()[2]),
        "python": repr(random.getstate()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()  # this process's current device
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    keys = np.frombuffer(state["numpy"].numpy().tobytes(), dtype=np.uint32)
    np.random.set_state(("MT19937", keys, state["numpy_pos"]))
    random.setstate(_literal_tuple(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _literal_tuple(text: str) -> tuple:
    import ast

    return ast.literal_eval(text)


def save_checkpoint(directory: Path, model: nn.Module, state: dict) -> None:
    """Write ``model`` (native format) and ``state`` (tensors and plain values) to ``directory`` atomically."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        save_model(model, tmp)
        torch.save(state, tmp / STATE_FILE)
        old = directory.with_name(f".{directory.name}.old")
        if directory.exists():
            if old.exists():  # a stale copy: `directory` is complete
                shutil.rmtree(old)
            os.rename(directory, old)
        # else `old`, if any, is the survivor of an interrupted swap: keep it until `directory` exists again
        os.rename(tmp, directory)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def checkpoint_dir(path: Path) -> Path:
    """The checkpoint directory to use for ``path``: itself, or a run's ``checkpoints/last`` (or a survivor
    of an interrupted swap)."""
    path = Path(path)
    for candidate in (path, path / "checkpoints" / "last", path / "checkpoints" / ".last.old"):
        if (candidate / STATE_FILE).exists():
            return candidate
    raise CheckpointError(f"no training checkpoint in {path}: expected {path}/checkpoints/last/{STATE_FILE}")


def run_model_dir(path: Path, best_first: bool = False) -> Path:
    """The model a path stands for: a run directory means its final ``model/`` (or, with ``best_first``,
    its best checkpoint first), else its best, else its last checkpoint; any other path is itself."""
    path = Path(path)
    if best_first and (path / "checkpoints" / "best").is_dir():
        return path / "checkpoints" / "best"
    if path.is_dir() and (path / "model").is_dir():
        return path / "model"
    if path.is_dir() and (path / "checkpoints").is_dir():
        best = path / "checkpoints" / "best"
        return best if best.exists() else checkpoint_dir(path)
    return path


def load_state(directory: Path) -> dict:
    path = Path(directory) / STATE_FILE
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any failure here means an unusable file
        raise CheckpointError(f"cannot read training state {path}: {str(error).splitlines()[0]}") from None
