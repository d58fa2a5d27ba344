"""`cct train --config FILE` with files that are not YAML, not a mapping, or hold unknown keys or wrong types.

Every error names the file (with line and column when the YAML itself is broken) and the key; no run starts.
"""

from __future__ import annotations

from pathlib import Path

import pytest

TINY = ["--samples-per-class", "5", "--epochs", "1", "--batch-size", "16", "--quiet", "--device", "cpu"]

# content -> words the error must hold; "{file}" is the config file
MALFORMED: dict[str, tuple[bytes, tuple[str, ...]]] = {
    "bad indentation": (b"epochs: 3\n  lr: 2\n", ("{file}:2:", "YAML")),
    "unclosed bracket": (b"betas: [0.9, 0.99\nlr: 1\n", ("{file}:", "YAML")),
    "unclosed quote": (b"model: 'cct_2_3x2_32\n", ("{file}:", "YAML")),
    "tab indentation": (b"mixup:\n\t- 1\n", ("{file}:2:", "YAML")),
    "binary file": (b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe", ("{file}", "UTF-8")),
    "latin-1 text": ("model: caf\xe9\n".encode("latin-1"), ("{file}:1", "UTF-8")),
    "a list": (b"- epochs\n- 3\n", ("{file}", "mapping", "list")),
    "a number": (b"42\n", ("{file}", "mapping", "int")),
    "a string": (b"just some words\n", ("{file}", "mapping", "str")),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_yaml(case: str, tmp_path: Path, cct, check) -> None:
    content, needles = MALFORMED[case]
    path = tmp_path / "config.yml"
    path.write_bytes(content)
    outcome = cct("train", "--config", path, *TINY, "--output", tmp_path / "runs")
    outcome.error_line("train", *(needle.format(file=path) for needle in needles))
    check.no_run_made(tmp_path / "runs")


UNKNOWN_KEYS: dict[str, tuple[str, str]] = {  # YAML -> (the key, a suggestion)
    "learning_rate: 0.001\n": ("learning_rate", "lr"),
    "epoch: 3\n": ("epoch", "epochs"),
    "batchsize: 8\n": ("batchsize", "batch_size"),
    "mix_up: 0.5\n": ("mix_up", "mixup"),
    "colour: blue\n": ("colour", "--help"),
    "1: 2\n": ("'1'", "--help"),
    "model:\n  name: cct_2_3x2_32\nfoo: 1\n": ("foo", ""),
}


@pytest.mark.parametrize("content", list(UNKNOWN_KEYS))
def test_unknown_yaml_key(content: str, tmp_path: Path, cct, check) -> None:
    key, hint = UNKNOWN_KEYS[content]
    path = tmp_path / "config.yml"
    path.write_text(content)
    outcome = cct("train", "--config", path, *TINY, "--output", tmp_path / "runs")
    outcome.error_line("train", str(path), key, hint)
    check.no_run_made(tmp_path / "runs")


WRONG_TYPES: dict[str, tuple[str, ...]] = {  # YAML -> words of the error ("{file}": the file, for a value of
    # the wrong type; a value out of range is judged with the command line's, on the merged settings)
    "epochs: many\n": ("{file}", "epochs", "'many'"),
    "epochs: 2.5\n": ("{file}", "epochs", "whole number"),
    "epochs: true\n": ("{file}", "epochs", "boolean"),
    "epochs: .nan\n": ("{file}", "epochs", "nan"),
    "lr: [1, 2]\n": ("{file}", "lr", "list"),
    "lr: .inf\n": ("{file}", "lr", "finite"),
    "lr: {peak: 1}\n": ("{file}", "lr", "dict"),
    "batch_size: '8x'\n": ("{file}", "batch_size", "'8x'"),
    "model: 123\n": ("{file}", "model", "string"),
    "aa: 5\n": ("{file}", "aa", "string"),
    "amp: maybe\n": ("{file}", "amp", "true or false"),
    "betas: abc\n": ("{file}", "betas", "'abc'"),
    "betas: [0.9]\n": ("betas", "two values"),
    "mean: {r: 0.5}\n": ("{file}", "mean", "list of numbers"),
    "std: [0]\n": ("std", "> 0"),
    "std: [0.5, 0.5]\n": ("std", "1 or 3 values"),
    "img_size: [32, 32]\n": ("{file}", "img_size", "[32, 32]"),
    "input_size: [3, 32, 48]\n": ("{file}", "input_size", "square"),
    "mixup_mode: elem\n": ("{file}", "mixup_mode", "batch"),
    "sched: step\n": ("sched", "cosine"),
    "warmup_epochs: 5\n": ("warmup_epochs", "epochs"),
}


@pytest.mark.parametrize("content", list(WRONG_TYPES))
def test_wrong_yaml_type(content: str, tmp_path: Path, cct, check) -> None:
    path = tmp_path / "config.yml"
    path.write_text(content)
    outcome = cct("train", "--config", path, *TINY, "--output", tmp_path / "runs")
    outcome.error_line("train", *(needle.format(file=path) for needle in WRONG_TYPES[content]))
    check.no_run_made(tmp_path / "runs")


@pytest.mark.parametrize("what", ["missing", "a folder"])
def test_config_that_is_not_a_file(what: str, tmp_path: Path, cct, check) -> None:
    path = tmp_path / "config.yml"
    if what == "a folder":
        path.mkdir()
    outcome = cct("train", "--config", path, *TINY, "--output", tmp_path / "runs")
    outcome.error_line("train", str(path), "not found")
    check.no_run_made(tmp_path / "runs")


def test_malformed_yaml_as_a_process(tmp_path: Path, process) -> None:
    path = tmp_path / "config.yml"
    path.write_text("epochs: 3\n  lr: 2\n")
    outcome = process("train", "--config", path, "--output", tmp_path / "runs")
    outcome.error_line("train", f"{path}:2:")
