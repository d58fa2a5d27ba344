"""Broken, missing and hostile checkpoints and saved models: `--resume`, `--pretrained`, `--teacher`, `cct eval`,
`cct predict`, `cct convert`, `cct export`.

A pickle that would run code is refused by every command and never executed; the message never suggests
`weights_only=False`. Whatever fails, the files it read are left as they were.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

TINY = ["--samples-per-class", "5", "--epochs", "1", "--batch-size", "16", "--quiet", "--device", "cpu"]


def copy_of(source: Path, tmp_path: Path) -> Path:
    target = tmp_path / source.name
    shutil.copytree(source, target)
    return target


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _zero(path: Path) -> None:
    path.write_bytes(b"")


def _garbage(path: Path) -> None:
    path.write_bytes(b"\x00\x01garbage" * 100)


# ---------------------------------------------------------------------------------------- --resume


def _not_a_dict(path: Path) -> None:
    torch.save([torch.zeros(2)], path)


STATE_DAMAGE: dict[str, Callable[[Path], None]] = {
    "zero-byte": _zero,
    "truncated": _truncate,
    "garbage": _garbage,
    "a list, not a state": _not_a_dict,
}


@pytest.mark.parametrize("damage", list(STATE_DAMAGE))
def test_resume_from_a_damaged_state(damage: str, digits_run: Path, tmp_path: Path, cct, check) -> None:
    run = copy_of(digits_run, tmp_path)
    for name in ("last", "best"):
        STATE_DAMAGE[damage](run / "checkpoints" / name / "state.pt")
    same = check.unchanged(run)
    outcome = cct("train", "--resume", run, "--epochs", "2")
    outcome.error_line("train", str(run / "checkpoints" / "last" / "state.pt"))
    same()


@pytest.mark.parametrize("part", ["model.safetensors", "config.json"])
def test_resume_from_a_damaged_checkpoint_model(part: str, digits_run: Path, tmp_path: Path, cct, check) -> None:
    run = copy_of(digits_run, tmp_path)
    _truncate(run / "checkpoints" / "last" / part)
    same = check.unchanged(run)
    outcome = cct("train", "--resume", run, "--epochs", "2")
    outcome.error_line("train", str(run / "checkpoints" / "last"))
    same()


def test_resume_a_run_whose_checkpoints_are_gone(digits_run: Path, tmp_path: Path, cct, check) -> None:
    """A run with trained epochs but no checkpoint is not started again over its results."""
    run = copy_of(digits_run, tmp_path)
    shutil.rmtree(run / "checkpoints")
    same = check.unchanged(run)
    outcome = cct("train", "--resume", run, "--epochs", "2")
    outcome.error_line("train", str(run), "checkpoint")
    same()


@pytest.mark.parametrize("what", ["a missing folder", "an empty folder", "a file"])
def test_resume_something_that_is_not_a_run(what: str, tmp_path: Path, cct, check) -> None:
    target = tmp_path / "run"
    if what == "an empty folder":
        target.mkdir()
    elif what == "a file":
        target.write_text("not a run")
    outcome = cct("train", "--resume", target)
    outcome.error_line("train", str(target), "run directory")
    assert sorted(p.name for p in tmp_path.iterdir()) == ([] if what == "a missing folder" else ["run"])


@pytest.mark.parametrize("content", ["epochs: [1\n", "- a\n- list\n", "\x00\xff\xfe binary", "colour: blue\n",
                                     "epochs: many\n"])  # fmt: skip
def test_resume_with_a_damaged_config_yaml(content: str, digits_run: Path, tmp_path: Path, cct, check) -> None:
    run = copy_of(digits_run, tmp_path)
    (run / "config.yaml").write_bytes(content.encode("latin-1"))
    same = check.unchanged(run)
    outcome = cct("train", "--resume", run)
    outcome.error_line("train", str(run / "config.yaml"))
    same()


# ------------------------------------------------------------------------------- saved models: config.json


def _config_edit(change: Callable[[dict], object]) -> Callable[[Path], None]:
    def edit(model_dir: Path) -> None:
        config = json.loads((model_dir / "config.json").read_text())
        replaced = change(config)
        (model_dir / "config.json").write_text(json.dumps(config if replaced is None else replaced))

    return edit


MODEL_DAMAGE: dict[str, tuple[Callable[[Path], None], tuple[str, ...]]] = {
    "config.json not JSON": (lambda d: (d / "config.json").write_text("{'kind': vision"), ("config.json", "JSON")),
    "config.json empty": (lambda d: _zero(d / "config.json"), ("config.json",)),
    "config.json a list": (_config_edit(lambda c: [c]), ("config.json", "object")),
    "num_layers a string": (_config_edit(lambda c: c.update(num_layers="two")), ("num_layers",)),
    "embed_dim negative": (_config_edit(lambda c: c.update(embed_dim=-128)), ("embed_dim",)),
    "img_size a word": (_config_edit(lambda c: c.update(img_size="big")), ("img_size",)),
    "num_classes fractional": (_config_edit(lambda c: c.update(num_classes=2.5)), ("num_classes",)),
    "mlp_ratio a string": (_config_edit(lambda c: c.update(mlp_ratio="x")), ("mlp_ratio",)),
    "extra a list": (_config_edit(lambda c: c.update(extra=["cat"])), ("extra",)),
    "unknown key": (_config_edit(lambda c: c.update(colour="blue")), ("colour",)),
    "unknown kind": (_config_edit(lambda c: c.update(kind="alien")), ("alien",)),
    "head for 5 classes, weights for 3": (_config_edit(lambda c: c.update(num_classes=5)), ("classes",)),
    "more layers than the weights": (_config_edit(lambda c: c.update(num_layers=4)), ("missing keys",)),
    "weights truncated": (lambda d: _truncate(d / "model.safetensors"), ("model.safetensors",)),
    "weights zero-byte": (lambda d: _zero(d / "model.safetensors"), ("model.safetensors",)),
    "weights garbage": (lambda d: _garbage(d / "model.safetensors"), ("model.safetensors",)),
    "weights missing": (lambda d: (d / "model.safetensors").unlink(), ("model.safetensors",)),
}


@pytest.mark.parametrize("damage", list(MODEL_DAMAGE))
@pytest.mark.parametrize("command", ["predict", "eval", "export"])
def test_a_damaged_saved_model(command: str, damage: str, rgb_model: Path, folder_data: Path, tmp_path: Path,
                               cct, make, check) -> None:  # fmt: skip
    model = copy_of(rgb_model, tmp_path)
    edit, needles = MODEL_DAMAGE[damage]
    edit(model)
    same = check.unchanged(model)
    if command == "predict":
        args = [*map(str, make.images(tmp_path / "images", 2))]
    elif command == "eval":
        args = ["--dataset", "folder", "--data", str(folder_data), "--output", str(tmp_path / "eval")]
    else:
        args = [str(tmp_path / "model.onnx"), "--format", "safetensors"]
    outcome = cct(command, model, *args)
    outcome.error_line(command, str(model), *needles)
    same()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["model", "images"][: 2 if command == "predict" else 1])


# ------------------------------------------------------------------------------------------ hostile pickles


@pytest.fixture
def hostile(tmp_path: Path, make) -> Callable[[str], Path]:
    """``hostile(style)``: a .pth that would create tmp_path/PWNED when unpickled unsafely."""

    def write(style: str = "torch") -> Path:
        return make.hostile(tmp_path / f"weights-{style}.pth", tmp_path / "PWNED", style)

    return write


def _refused(outcome, command: str, path: Path, tmp_path: Path) -> None:
    outcome.error_line(command, str(path))
    assert not (tmp_path / "PWNED").exists()
    assert "weights_only" not in outcome.err


@pytest.mark.parametrize("style", ["torch", "legacy", "pickle"])
def test_hostile_pickle_as_pretrained_weights(style: str, hostile, tmp_path: Path, cct, check) -> None:
    path = hostile(style)
    outcome = cct("train", *TINY, "--pretrained", path, "--output", tmp_path / "runs")
    _refused(outcome, "train", path, tmp_path)
    check.no_run_made(tmp_path / "runs")


@pytest.mark.parametrize("style", ["torch", "legacy", "pickle"])
def test_hostile_pickle_to_convert(style: str, hostile, tmp_path: Path, cct) -> None:
    path = hostile(style)
    outcome = cct("convert", path, "--model", "cct_2_3x2_32", "--output", tmp_path / "converted")
    _refused(outcome, "convert", path, tmp_path)
    assert not (tmp_path / "converted").exists()


def test_hostile_pickle_as_teacher(hostile, tmp_path: Path, cct, check) -> None:
    path = hostile()
    outcome = cct("train", *TINY, "--teacher", path, "--output", tmp_path / "runs")
    _refused(outcome, "train", path, tmp_path)
    assert "--teacher" in outcome.err and "not a saved model" in outcome.err
    check.no_run_made(tmp_path / "runs")


def test_hostile_pickle_as_resume_state(digits_run: Path, tmp_path: Path, cct, make, check) -> None:
    run = copy_of(digits_run, tmp_path)
    for name in ("last", "best"):
        make.hostile(run / "checkpoints" / name / "state.pt", tmp_path / "PWNED")
    same = check.unchanged(run)
    outcome = cct("train", "--resume", run, "--epochs", "2")
    _refused(outcome, "train", run / "checkpoints" / "last" / "state.pt", tmp_path)
    assert "refusing" in outcome.err
    same()


@pytest.mark.parametrize("command", ["eval", "predict", "export"])
def test_hostile_pickle_as_a_model(command: str, hostile, tmp_path: Path, cct, make) -> None:
    path = hostile()
    extra = {"eval": ["--dataset", "digits"], "predict": [str(make.images(tmp_path / "im", 1)[0])],
             "export": [str(tmp_path / "out.onnx")]}[command]  # fmt: skip
    outcome = cct(command, path, *extra)
    _refused(outcome, command, path, tmp_path)
    assert "not a saved model" in outcome.err and "cct convert" in outcome.err
    assert not (tmp_path / "out.onnx").exists()


def test_hostile_pickle_to_convert_as_a_process(hostile, tmp_path: Path, process) -> None:
    path = hostile()
    outcome = process("convert", path, "--model", "cct_2_3x2_32", "--output", tmp_path / "converted")
    _refused(outcome, "convert", path, tmp_path)


# ----------------------------------------------------------------------------------------- missing files


@pytest.mark.parametrize("option", ["--pretrained", "--teacher"])
@pytest.mark.parametrize("target", ["missing.pth", "missing_dir", "empty_dir"])
def test_missing_weights_for_training(option: str, target: str, tmp_path: Path, cct, check) -> None:
    path = tmp_path / target
    if target == "empty_dir":
        path.mkdir()
    outcome = cct("train", *TINY, option, path, "--output", tmp_path / "runs")
    outcome.error_line("train", option, str(path))
    check.no_run_made(tmp_path / "runs")


@pytest.mark.parametrize("command", ["eval", "predict", "export", "convert"])
def test_missing_model_file(command: str, tmp_path: Path, cct) -> None:
    path = tmp_path / "weights.safetensors"
    extra = {"eval": [], "predict": [str(tmp_path)], "export": [str(tmp_path / "out.onnx")],
             "convert": ["--model", "cct_2_3x2_32", "--output", str(tmp_path / "out")]}[command]  # fmt: skip
    outcome = cct(command, path, *extra)
    outcome.error_line(command, str(path))


def test_pretrained_weights_of_another_architecture(text_run: Path, tmp_path: Path, cct, check) -> None:
    outcome = cct("train", *TINY, "--pretrained", text_run, "--output", tmp_path / "runs")
    outcome.error_line("train", str(text_run / "model"), "does not match")
    check.no_run_made(tmp_path / "runs")


def test_teacher_for_other_classes(folder_run: Path, tmp_path: Path, cct, check) -> None:
    outcome = cct("train", *TINY, "--teacher", folder_run, "--output", tmp_path / "runs")
    outcome.error_line("train", "teacher", str(folder_run), "3 classes")
    check.no_run_made(tmp_path / "runs")


def test_convert_to_an_unknown_preset(digits_run: Path, tmp_path: Path, cct) -> None:
    outcome = cct("convert", digits_run / "model" / "model.safetensors", "--model", "cct_2_3x2_3",
                  "--output", tmp_path / "out")  # fmt: skip
    outcome.error_line("convert", "cct_2_3x2_3", "cct_2_3x2_32")
    assert not (tmp_path / "out").exists()


def test_convert_into_the_wrong_preset(digits_run: Path, tmp_path: Path, cct) -> None:
    outcome = cct("convert", digits_run / "model" / "model.safetensors", "--model", "cct_7_3x1_32",
                  "--output", tmp_path / "out")  # fmt: skip
    outcome.error_line("convert", "model.safetensors", "width")
    assert not (tmp_path / "out").exists()
