"""Writing files so that a crash never leaves half of one: shared by models, data and training."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


_TEMP_SUFFIX = ".tmp"  # atomic_write's temporary files: .NAME.XXXXXXXX.tmp beside NAME


def atomic_write(path: str | os.PathLike, write: Callable[[str], object]) -> None:
    """Call ``write(tmp)`` on a temporary file in ``path``'s directory, then rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=_TEMP_SUFFIX, dir=path.parent)
    os.close(handle)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes 0600 files: follow the umask like other tools
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def remove_unfinished_writes(folder: str | os.PathLike) -> None:
    """Delete the temporary files that :func:`atomic_write` calls killed mid-write left in ``folder``."""
    for leftover in Path(folder).glob(f".*{_TEMP_SUFFIX}"):
        if leftover.is_file():  # directories named so are someone else's (``.model.tmp``)
            leftover.unlink(missing_ok=True)


def current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def make_temp_dir(parent: Path, prefix: str) -> Path:
    """A new directory in ``parent`` with the permissions the umask gives (mkdtemp's are 0700)."""
    directory = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    os.chmod(directory, 0o777 & ~current_umask())
    return directory


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Replace ``path`` with ``text`` atomically."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))
