"""Training checkpoints: atomic replacement, run-directory lookup, RNG state round trip."""

from __future__ import annotations

import os
import errno
import random
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from compact_transformers.models import create_model, load_model
from compact_transformers.models.weights import CheckpointError
from compact_transformers.training import state as state_module
from compact_transformers.training.state import (
    STATE_FILE,
    checkpoint_dir,
    clean_checkpoints,
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
        if failing == "torch.save":  # what torch.save raises when the disk fills up
            raise RuntimeError("[enforce fail at inline_container.cc:672] . basic_ios::clear: iostream error")
        raise OSError(errno.ENOSPC, "No space left on device")

    if failing == "torch.save":
        monkeypatch.setattr(state_module.torch, "save", broken)
        monkeypatch.setattr(state_module.shutil, "disk_usage", lambda path: SimpleNamespace(free=0))
    else:
        monkeypatch.setattr(state_module, "save_model", broken)
    with pytest.raises(CheckpointError, match=r"cannot write the checkpoint .*last: the disk is full .* intact"):
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


def test_checkpoint_dir_falls_back_to_best_before_the_first_last(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "checkpoints" / "best", small_model(0), {"epoch": 1})
    assert checkpoint_dir(tmp_path) == tmp_path / "checkpoints" / "best"


def test_clean_checkpoints_finishes_cut_swaps_and_removes_temporaries(tmp_path: Path) -> None:
    folder = tmp_path / "checkpoints"
    save_checkpoint(folder / "last", small_model(0), {"epoch": 1})
    save_checkpoint(folder / "best", small_model(0), {"epoch": 1})
    (folder / "last").rename(folder / ".last.old")  # killed between the renames of epoch 2's swap
    save_checkpoint(folder / "scratch", small_model(1), {"epoch": 2})
    (folder / "scratch").rename(folder / ".last.new")
    (folder / ".best.tmp.abc123").mkdir()  # killed while writing
    (tmp_path / "curves.png").write_bytes(b"old plot")
    (tmp_path / ".curves.png.k3lfbxc0.tmp").write_bytes(b"half a plot")  # killed in atomic_write
    clean_checkpoints(tmp_path)
    assert sorted(p.name for p in folder.iterdir()) == ["best", "last"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoints", "curves.png"]
    assert load_state(folder / "last")["epoch"] == 2


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


def test_failed_swap_leaves_the_newer_copy_that_the_next_save_promotes(
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
    survivor = checkpoint_dir(tmp_path)  # the complete newer copy, not the older `.last.old`
    assert survivor.name == ".last.new" and load_state(survivor)["epoch"] == 2
    assert load_state(target.with_name(".last.old"))["epoch"] == 1

    # the next save never removes a copy before a newer complete one is in place
    rmtree = state_module.shutil.rmtree

    def checking_rmtree(path: object, ignore_errors: bool = False) -> None:
        if Path(path).name in (".last.old", ".last.new"):
            assert (target / STATE_FILE).exists(), f"{path} removed while no `last` exists"
        rmtree(path, ignore_errors=ignore_errors)

    monkeypatch.setattr(state_module.shutil, "rmtree", checking_rmtree)
    save_checkpoint(target, small_model(2), {"epoch": 3})
    assert sorted(p.name for p in target.parent.iterdir()) == ["last"]
    assert load_state(checkpoint_dir(tmp_path))["epoch"] == 3
    assert sorted(p.name for p in target.parent.iterdir()) == ["last"]


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("touch SHOULD_NOT_EXIST",))


def test_damaged_or_hostile_training_states_are_one_line_errors(tmp_path, monkeypatch) -> None:
    from compact_transformers.errors import CheckpointError
    from compact_transformers.training.state import load_state

    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError, match="state.pt is missing"):
        load_state(tmp_path)
    (tmp_path / "state.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="state.pt is empty"):
        load_state(tmp_path)
    (tmp_path / "state.pt").write_bytes(b"\x80\x04garbage" * 5)
    with pytest.raises(CheckpointError, match="corrupt"):
        load_state(tmp_path)
    torch.save({"x": _RunsCode()}, tmp_path / "state.pt")
    with pytest.raises(CheckpointError) as caught:
        load_state(tmp_path)
    message = str(caught.value)
    assert "refusing to load" in message and "nothing was executed" in message
    assert "weights_only" not in message and "likely succeed" not in message and "\n" not in message
    assert not (tmp_path / "SHOULD_NOT_EXIST").exists()


def test_checkpoint_files_follow_the_umask(tmp_path: Path) -> None:
    import os
    import stat

    previous = os.umask(0o022)
    try:
        save_checkpoint(tmp_path / "checkpoints" / "last", small_model(0), {"epoch": 1})
    finally:
        os.umask(previous)
    last = tmp_path / "checkpoints" / "last"
    assert stat.S_IMODE(last.stat().st_mode) == 0o755
    for name in ("model.safetensors", "config.json", STATE_FILE):
        assert stat.S_IMODE((last / name).stat().st_mode) == 0o644, name
