"""Every file the library writes is replaced atomically: a kill mid-write keeps the old file whole."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

import compact_transformers
from compact_transformers.fileio import atomic_write_text, remove_unfinished_writes

SOURCE = Path(compact_transformers.__file__).parent
# a call that writes a file's contents (torch.save, safetensors' save_file, matplotlib's savefig, pathlib, open "w");
# appending is not one: metrics.jsonl gains a line an epoch and is rewritten whole from the checkpoint on resume
WRITES = re.compile(r"torch\.save\(|save_file\(|savefig\(|\.write_(text|bytes)\(|open\([^)]*[\"']wb?[\"']")
NOT_FILES = ("/proc/self/clear_refs",)  # a kernel interface, not a file anyone keeps


def test_every_write_in_the_library_goes_through_atomic_write() -> None:
    direct = []
    for path in sorted(SOURCE.rglob("*.py")):
        if path.name == "fileio.py":
            continue
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            if WRITES.search(line) and "atomic_write" not in line and not any(name in line for name in NOT_FILES):
                direct.append(f"{path.relative_to(SOURCE)}:{number}: {line.strip()}")
    assert not direct, "written in place (a kill mid-write leaves a broken file):\n" + "\n".join(direct)


def test_atomic_write_replaces_the_file_or_leaves_it_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "report.json"
    atomic_write_text(target, "old")

    def disk_full(self: Path, text: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(Path, "write_text", disk_full)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_text(target, "new")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["report.json"]  # no temp left


def test_the_temporary_file_of_a_killed_write_is_removed_and_nothing_else(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    def killed(source: str, target: str) -> None:
        raise KeyboardInterrupt

    atomic_write_text(tmp_path / "final.json", "old")
    (tmp_path / ".model.tmp").mkdir()  # a directory of another writer's
    monkeypatch.setattr(os, "replace", killed)  # killed between writing the temporary file and renaming it,
    monkeypatch.setattr(os, "unlink", lambda path: None)  # so that no clean-up ran either
    with pytest.raises(KeyboardInterrupt):
        atomic_write_text(tmp_path / "final.json", "new")
    monkeypatch.undo()
    assert len(list(tmp_path.glob(".final.json.*"))) == 1
    remove_unfinished_writes(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".model.tmp", "final.json"]
    assert (tmp_path / "final.json").read_text() == "old"
