"""Every file the library writes is replaced atomically: a kill mid-write keeps the old file whole."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import compact_transformers
from compact_transformers.fileio import atomic_write_text

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
    monkeypatch.setattr(Path, "write_text", lambda self, text: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        atomic_write_text(target, "new")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["report.json"]  # no temp left
