"""Training checkpoints: a directory per checkpoint, replaced atomically.

``<run>/checkpoints/last/`` and ``.../best/`` each hold ``model.safetensors`` + ``config.json`` (loadable by
``load_model``) and ``state.pt`` (optimizer, schedule, scaler, EMA, RNG state, progress), read back with
``torch.load(weights_only=True)``. A new checkpoint is written to a temporary directory and swapped in with
renames, so a run killed at any moment leaves the previous checkpoint intact.
"""

from __future__ import annotations

import errno
import os
import pickle
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..faults import kill_point
from ..fileio import atomic_write, make_temp_dir, remove_unfinished_writes
from ..models.weights import CheckpointError, first_sentence, save_model, unpickling_message

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
    """Write ``model`` (native format) and ``state`` (tensors and plain values) to ``directory`` so that a kill
    at any moment leaves a complete checkpoint that :func:`checkpoint_dir` finds, never a half-written one.

    The new copy is written to ``.NAME.new`` (its ``state.pt`` last, itself atomically: a copy with ``state.pt``
    is complete), then swapped in: ``NAME`` -> ``.NAME.old``, ``.NAME.new`` -> ``NAME``, ``.NAME.old`` removed.
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    new, old = _swap_names(directory)
    _finish_swap(directory)  # of a save that was killed between its renames
    tmp = make_temp_dir(directory.parent, prefix=f".{directory.name}.tmp.")
    try:
        save_model(model, tmp)
        kill_point(f"{directory.name}-model")
        atomic_write(tmp / STATE_FILE, lambda path: torch.save(state, path))
        kill_point(f"{directory.name}-state")
        os.rename(tmp, new)
        kill_point(f"{directory.name}-complete")
    except (OSError, RuntimeError) as error:  # torch.save reports a full disk as RuntimeError("...iostream error")
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(error, RuntimeError) and "iostream" not in str(error) and "write" not in str(error):
            raise
        raise _write_error(error, directory) from None
    if directory.exists():
        if old.exists():  # a stale copy: `directory` is complete
            shutil.rmtree(old)
        os.rename(directory, old)
    kill_point(f"{directory.name}-swap")
    os.rename(new, directory)
    kill_point(f"{directory.name}-swapped")
    shutil.rmtree(old, ignore_errors=True)


def _swap_names(directory: Path) -> tuple[Path, Path]:
    return directory.with_name(f".{directory.name}.new"), directory.with_name(f".{directory.name}.old")


def _finish_swap(directory: Path) -> None:
    """Complete a swap that a kill cut short: ``.NAME.new`` is only ever renamed into place complete."""
    new, old = _swap_names(directory)
    if new.exists():
        if directory.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.rename(directory, old)
        os.rename(new, directory)
    if directory.exists():
        shutil.rmtree(old, ignore_errors=True)


def _write_error(error: OSError | RuntimeError, directory: Path) -> CheckpointError:
    """A failed checkpoint write as one line; the previous checkpoint is untouched at this point."""
    full = getattr(error, "errno", None) == errno.ENOSPC or shutil.disk_usage(directory.parent).free < 2**20
    reason = "the disk is full" if full else (getattr(error, "strerror", None) or first_sentence(str(error)))
    return CheckpointError(f"cannot write the checkpoint {directory}: {reason} (in {directory.parent}); "
                           f"the previous checkpoint, if any, is intact")


def checkpoint_dir(path: Path) -> Path:
    """The checkpoint to resume ``path`` from: itself, or the run's newest complete copy of ``last`` (an
    interrupted swap's ``.last.new``, then ``last``, then ``.last.old``), or ``best`` when no ``last`` was written."""
    path = Path(path)
    last = path / "checkpoints" / "last"
    new, old = _swap_names(last)
    for candidate in (path, new, last, old, path / "checkpoints" / "best"):
        if (candidate / STATE_FILE).exists():
            return candidate
    raise CheckpointError(f"no training checkpoint in {path}: expected {path}/checkpoints/last/{STATE_FILE}")


def check_resumable(run_dir: Path) -> None:
    """A run continues from its newest checkpoint, or starts again when it has none and no results yet (killed
    in its first epoch); a run with results but no checkpoint is refused, so that they are not overwritten."""
    run_dir = Path(run_dir)
    try:
        checkpoint_dir(run_dir)
    except CheckpointError:
        results = [name for name in ("metrics.jsonl", "final.json", "model")
                   if (run_dir / name).is_dir() or ((run_dir / name).is_file() and (run_dir / name).stat().st_size)]
        if results:
            raise CheckpointError(f"cannot resume {run_dir}: it has no checkpoint ({run_dir}/checkpoints/last/"
                                  f"{STATE_FILE}) but has results ({', '.join(results)}) that starting again would "
                                  "overwrite; train a new run instead") from None


def save_final_model(model: nn.Module, run_dir: Path) -> Path:
    """``run_dir/model``, written whole: into ``.model.tmp`` first, then renamed into place."""
    target, tmp = Path(run_dir) / "model", Path(run_dir) / ".model.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    save_model(model, tmp)
    if target.exists():  # a run finished again after a resume
        shutil.rmtree(target)
    os.rename(tmp, target)
    return target


def clean_checkpoints(run_dir: Path) -> None:
    """Remove what killed writes left behind (checkpoints, ``model/``, and the temporary files of
    :func:`~compact_transformers.fileio.atomic_write`: final.json, the plots), promoting a complete ``.NAME.new``
    whose swap was cut."""
    shutil.rmtree(Path(run_dir) / ".model.tmp", ignore_errors=True)
    remove_unfinished_writes(run_dir)
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return
    for name in ("last", "best"):
        _finish_swap(folder / name)
    for leftover in folder.glob(".*.tmp.*"):
        shutil.rmtree(leftover, ignore_errors=True)


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
    """The training state of a checkpoint, read safely (tensors and plain values only; nothing is executed)."""
    path = Path(directory) / STATE_FILE
    if not path.is_file():
        raise CheckpointError(f"cannot resume: {path} is missing (the checkpoint is incomplete)")
    if path.stat().st_size == 0:
        raise CheckpointError(f"cannot resume: {path} is empty (the checkpoint is damaged)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise CheckpointError(unpickling_message(path, error)) from None
    except Exception as error:  # noqa: BLE001 - any other failure here means an unusable file
        reason = first_sentence(str(error)) or type(error).__name__
        raise CheckpointError(f"cannot read training state {path}: corrupt or truncated ({reason})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"cannot resume: {path} does not hold a training state")
    return state
