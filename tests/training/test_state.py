"""Training checkpoints: atomic replacement, run-directory lookup, RNG state round trip."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from compact_transformers.models import create_model, load_model
from compact_transformers.models.weights import CheckpointError
from compact_transformers.training import state as state_module
from compact_transformers.training.state import (
    STATE_FILE,
    checkpoint_dir,
    load_state,
    rng_state,
    save_checkpoint,
    set_rng_state,
)


def small_model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_model("cct_2_3x2_32", num_classes=3, in_chans=1, img_size=(8, 8))


def draws() -> tuple:
    return torch.rand(4), np.random.rand(4), [random.random() for _ in range(4)]


def assert_same_draws(a: tuple, b: tuple) -> None:
    assert torch.equal(a[0], b[0])
    assert np.array_equal(a[1], b[1])
    assert a[2] == b[2]


def test_rng_state_round_trip_restores_torch_numpy_and_python() -> None:
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    draws()  # move away from the freshly seeded states
    saved = rng_state()
    expected = draws()
    draws()
    set_rng_state(saved)
    assert_same_draws(draws(), expected)


def test_rng_state_survives_a_weights_only_checkpoint(tmp_path: Path) -> None:
    np.random.seed(7)
    random.seed(7)
    saved = rng_state()
    expected = draws()
    torch.save({"rng": saved}, tmp_path / "rng.pt")
    loaded = torch.load(tmp_path / "rng.pt", weights_only=True)["rng"]
    set_rng_state(loaded)
    assert_same_draws(draws(), expected)


def test_save_checkpoint_writes_model_and_state(tmp_path: Path) -> None:
    model = small_model(0)
    target = tmp_path / "run" / "checkpoints" / "last"
    save_checkpoint(target, model, {"epoch": 3, "weights": torch.arange(5)})
    assert sorted(p.name for p in target.iterdir()) == ["config.json", "model.safetensors", STATE_FILE]
    state = load_state(target)
    assert state["epoch"] == 3 and torch.equal(state["weights"], torch.arange(5))
    reloaded = load_model(target)
    for key, value in model.state_dict().items():
        assert torch.equal(reloaded.state_dict()[key], value), key


def test_save_checkpoint_replaces_the_previous_one(tmp_path: Path) -> None:
    target = tmp_path / "checkpoints" / "last"
    save_checkpoint(target, small_model(0), {"epoch": 1})
    newer = small_model(1)
    save_checkpoint(target, newer, {"epoch": 2})
    assert load_state(target)["epoch"] == 2
    assert torch.equal(load_model(target).classifier.fc.weight, newer.classifier.fc.weight)
    assert sorted(p.name for p in target.parent.iterdir()) == ["last"]  # no temp or .old directory left


@pytest.mark.parametrize("failing", ["torch.save", "save_model"])
def test_failed_save_keeps_the_old_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str) -> None:
    target = tmp_path / "checkpoints" / "last"
    old = small_model(0)
    save_checkpoint(target, old, {"epoch": 1})

    def broken(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    if failing == "torch.save":
        monkeypatch.setattr(state_module.torch, "save", broken)
    else:
        monkeypatch.setattr(state_module, "save_model", broken)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(target, small_model(1), {"epoch": 2})
    monkeypatch.undo()
    assert load_state(target)["epoch"] == 1
    assert torch.equal(load_model(target).classifier.fc.weight, old.classifier.fc.weight)
    assert sorted(p.name for p in target.parent.iterdir()) == ["last"]


def test_checkpoint_dir_finds_last_and_the_survivor_of_an_interrupted_swap(tmp_path: Path) -> None:
    run = tmp_path / "run"
    save_checkpoint(run / "checkpoints" / "last", small_model(0), {"epoch": 1})
    assert checkpoint_dir(run) == run / "checkpoints" / "last"
    assert checkpoint_dir(run / "checkpoints" / "last") == run / "checkpoints" / "last"
    # killed between the two renames: only `.last.old` holds the checkpoint
    (run / "checkpoints" / "last").rename(run / "checkpoints" / ".last.old")
    assert checkpoint_dir(run) == run / "checkpoints" / ".last.old"


def test_checkpoint_dir_without_checkpoint_names_the_expected_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=f"checkpoints/last/{STATE_FILE}"):
        checkpoint_dir(tmp_path)


def test_load_state_of_a_damaged_file_is_a_one_line_error(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "last", small_model(0), {"epoch": 1})
    path = tmp_path / "last" / STATE_FILE
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(CheckpointError, match="cannot read training state") as error:
        load_state(tmp_path / "last")
    assert "\n" not in str(error.value)


def test_load_state_refuses_pickled_code(tmp_path: Path) -> None:
    (tmp_path / "last").mkdir()
    torch.save({"epoch": 1, "evil": Path("x")}, tmp_path / "last" / STATE_FILE)  # not a plain value
    with pytest.raises(CheckpointError):
        load_state(tmp_path / "last")


def test_failed_swap_leaves_a_survivor_that_the_next_save_keeps_until_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "checkpoints" / "last"
    save_checkpoint(target, small_model(0), {"epoch": 1})
    rename = state_module.os.rename

    def rename_fails_for_the_new_checkpoint(src: object, dst: object) -> None:
        if Path(dst) == target:
            raise OSError("killed mid-swap")
        rename(src, dst)

    monkeypatch.setattr(state_module.os, "rename", rename_fails_for_the_new_checkpoint)
    with pytest.raises(OSError, match="mid-swap"):
        save_checkpoint(target, small_model(1), {"epoch": 2})
    monkeypatch.undo()
    survivor = checkpoint_dir(tmp_path)
    assert survivor.name == ".last.old" and load_state(survivor)["epoch"] == 1

    # the next save must not delete the survivor before its replacement is in place
    removed: list[Path] = []
    rmtree = state_module.shutil.rmtree

    def recording_rmtree(path: object, ignore_errors: bool = False) -> None:
        if Path(path) == survivor:
            assert load_state(target)["epoch"] == 3, "the survivor was removed before the new checkpoint landed"
        removed.append(Path(path))
        rmtree(path, ignore_errors=ignore_errors)

    monkeypatch.setattr(state_module.shutil, "rmtree", recording_rmtree)
    save_checkpoint(target, small_model(2), {"epoch": 3})
    assert survivor in removed
    assert load_state(checkpoint_dir(tmp_path))["epoch"] == 3
    assert sorted(p.name for p in target.parent.iterdir()) == ["last"]
