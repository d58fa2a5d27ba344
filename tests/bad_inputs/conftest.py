"""The bad-input corpus: every case runs the real `cct` and checks how it fails.

A bad input must give exit code 2 and exactly one stderr line `cct COMMAND: error: ...` naming what was wrong
(lines `warning: ...` about single files may come before it), never a traceback; and nothing saved before the
command may change: an autouse fixture hashes every shared run and model before and after each test.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from compact_transformers.cli import main

# A 1-epoch run of a few images: seconds
TINY = ["--samples-per-class", "5", "--epochs", "1", "--batch-size", "16", "--quiet", "--device", "cpu"]
ERROR_LINE = re.compile(r"^cct [a-z]+( [a-z]+)?: error: \S")

_SAVED: list[Path] = []  # what the shared fixtures saved: it must never change


@dataclass
class Outcome:
    """What a `cct` command did: its exit code and output."""

    code: int
    out: str
    err: str

    def error_line(self, command: str, *needles: str) -> str:
        """The one error line of a failed command (exit 2), which must hold every needle (case-insensitive)."""
        assert self.code == 2, f"exit {self.code}; stderr:\n{self.err}"
        assert "Traceback" not in self.err, self.err
        lines = [line for line in self.err.splitlines() if line.strip()]
        errors = [line for line in lines if ERROR_LINE.match(line)]
        assert len(errors) == 1, lines
        assert lines[-1] == errors[0], lines  # the error is the last word
        others = [line for line in lines[:-1] if not line.startswith("warning: ")]
        assert not others, lines
        line = errors[0]
        assert line.startswith(f"cct {command}: error: "), line
        for needle in needles:
            assert needle.lower() in line.lower(), f"{needle!r} not in {line!r}"
        assert "weights_only=False" not in self.err
        return line

    def succeeded(self) -> str:
        assert self.code == 0, f"exit {self.code}; stderr:\n{self.err}"
        assert "Traceback" not in self.err and ": error: " not in self.err, self.err
        return self.out


@pytest.fixture
def cct(capsys: pytest.CaptureFixture) -> Callable[..., Outcome]:
    """Run `cct ARGS...` in-process (argparse's exit included)."""

    def run(*argv: str | Path) -> Outcome:
        capsys.readouterr()
        try:
            code = main([str(a) for a in argv])
        except SystemExit as exit_info:  # argparse refuses the command line
            code = exit_info.code
        captured = capsys.readouterr()
        return Outcome(int(code), captured.out, captured.err)

    return run


def run_process(*argv: str | Path, stdin: str | None = None, timeout: float = 120) -> Outcome:
    """`python -m compact_transformers.cli ARGS...` as its own process: the real exit code and stderr."""
    result = subprocess.run([sys.executable, "-m", "compact_transformers.cli", *map(str, argv)], input=stdin,
                            capture_output=True, text=True, timeout=timeout)  # fmt: skip
    return Outcome(result.returncode, result.stdout, result.stderr)


@pytest.fixture
def process() -> Callable[..., Outcome]:
    return run_process


def snapshot(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` (or of ``root`` itself), by relative path."""
    root = Path(root)
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def unchanged(path: Path) -> Callable[[], None]:
    """``same = unchanged(path)`` before a command, ``same()`` after: nothing under path changed or appeared."""
    before = snapshot(path)
    return lambda: _same(path, before)


def _same(path: Path, before: dict[str, str]) -> None:
    after = snapshot(path)
    changed = sorted(k for k in before.keys() & after.keys() if before[k] != after[k])
    assert (changed, sorted(before.keys() - after.keys()), sorted(after.keys() - before.keys())) == ([], [], []), \
        f"{path}: changed, lost, new files"


@pytest.fixture(autouse=True)
def _saved_files_never_change() -> None:
    before = {path: snapshot(path) for path in _SAVED}
    yield
    for path, hashes in before.items():
        _same(path, hashes)


def no_run_made(output: Path) -> None:
    """A command refused before training: no run directory in ``output``."""
    assert not output.exists() or not any(output.iterdir()), list(output.iterdir())


def strict_json_lines(path: Path) -> list[dict]:
    """The records of a JSON-lines file, refusing the non-standard NaN / Infinity."""

    def refuse(name: str) -> None:
        raise AssertionError(f"{path}: {name} is not JSON")

    return [json.loads(line, parse_constant=refuse) for line in path.read_text().splitlines() if line.strip()]


# ----------------------------------------------------------------------------------------------- data


def write_images(folder: Path, count: int, size: tuple[int, int] = (12, 12), mode: str = "RGB", seed: int = 0,
                 prefix: str = "img") -> list[Path]:
    """``count`` random PNG images in ``folder``."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    shape = (*size, 3) if mode == "RGB" else size
    paths = []
    for i in range(count):
        path = folder / f"{prefix}{i}.png"
        Image.fromarray(rng.integers(0, 256, size=shape, dtype=np.uint8), mode=mode).save(path)
        paths.append(path)
    return paths


def write_folder_dataset(root: Path, classes: tuple[str, ...] = ("a", "b"), per_class: int = 5,
                         size: tuple[int, int] = (12, 12)) -> Path:
    """``root/<class>/img*.png``: class folders without train/ (split 80/20 by the reader)."""
    for i, name in enumerate(classes):
        write_images(root / name, per_class, size=size, seed=i)
    return root


def write_text_dataset(root: Path, train: int = 60, test: int = 20) -> Path:
    """``root/train.csv`` and ``root/test.csv`` of two classes told apart by one word."""
    root.mkdir(parents=True, exist_ok=True)
    for name, count in (("train", train), ("test", test)):
        rows = ["text,label"]
        for i in range(count):
            label = ("sport", "money")[i % 2]
            rows.append(f"the {('match', 'bank')[i % 2]} number {i} was on,{label}")
        (root / f"{name}.csv").write_text("\n".join(rows) + "\n")
    return root


class Hostile:
    """Unpickling this runs code: it would create ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple:
        return (exec, (f"open({self.marker!r}, 'w').close()",))


def write_hostile(path: Path, marker: Path, style: str = "torch") -> Path:
    """A weight file that runs code when unpickled unsafely: torch.save's zip format, its legacy format, or a
    bare pickle; the hostile object sits where the tensors would be."""
    import pickle

    import torch

    payload = {"state_dict": {"classifier.fc.weight": Hostile(marker)}}
    path.parent.mkdir(parents=True, exist_ok=True)
    if style == "torch":
        torch.save(payload, path)
    elif style == "legacy":
        torch.save(payload, path, _use_new_zipfile_serialization=False)
    else:
        path.write_bytes(pickle.dumps(payload))
    assert not marker.exists()
    return path


@pytest.fixture
def make() -> SimpleNamespace:
    """The writers of test data (test modules here are not an importable package)."""
    return SimpleNamespace(images=write_images, folder=write_folder_dataset, text=write_text_dataset,
                           hostile=write_hostile)


@pytest.fixture
def check() -> SimpleNamespace:
    """The checks of what a command left behind."""
    return SimpleNamespace(unchanged=unchanged, no_run_made=no_run_made, json_lines=strict_json_lines)


# ---------------------------------------------------------------------------------- shared runs/models


def _saved(path: Path) -> Path:
    _SAVED.append(path)
    return path


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1-epoch run on the bundled digits (1 channel, 16x16, 10 classes)."""
    output = tmp_path_factory.mktemp("digits")
    code = main(["train", *TINY, "--seed", "3", "--output", str(output), "--name", "run"])
    assert code == 0
    return _saved(output / "run")


@pytest.fixture(scope="session")
def folder_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Class folders a, b, c of 5 RGB 12x12 images each."""
    return _saved(write_folder_dataset(tmp_path_factory.mktemp("folder") / "shapes", ("a", "b", "c")))


@pytest.fixture(scope="session")
def folder_run(folder_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1-epoch run on `folder_data` (`--dataset folder --data DIR`)."""
    output = tmp_path_factory.mktemp("folder_runs")
    code = main(["train", "--dataset", "folder", "--data", str(folder_data), "--epochs", "1", "--batch-size", "8",
                 "--quiet", "--device", "cpu", "--output", str(output), "--name", "run"])  # fmt: skip
    assert code == 0
    return _saved(output / "run")


@pytest.fixture(scope="session")
def text_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _saved(write_text_dataset(tmp_path_factory.mktemp("text") / "news"))


@pytest.fixture(scope="session")
def text_run(text_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1-epoch text_cct_2_1x1 run on `text_data`."""
    output = tmp_path_factory.mktemp("text_runs")
    code = main(["train", "--data", str(text_data), "--epochs", "1", "--quiet", "--device", "cpu",
                 "--output", str(output), "--name", "run"])  # fmt: skip
    assert code == 0
    return _saved(output / "run")


@pytest.fixture(scope="session")
def rgb_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained saved model for RGB 16x16 images of 3 named classes."""
    from compact_transformers.models import create_model
    from compact_transformers.models.weights import save_model

    model = create_model("cct_2_3x2_32", num_classes=3, img_size=(16, 16), extra={"classes": ["cat", "dog", "owl"]})
    path = tmp_path_factory.mktemp("rgb") / "model"
    save_model(model, path)
    return _saved(path)
