"""Ctrl-C and SIGTERM while `cct` waits for its input: exit 130 / 143 with one line, no traceback."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest


def _waits_on_stdin(pid: int) -> bool:
    """Whether the process is blocked in read(0, ...) (x86-64 and arm64 syscall numbers)."""
    try:
        fields = Path(f"/proc/{pid}/syscall").read_text().split()
    except OSError:
        pytest.skip("needs /proc/PID/syscall (Linux)")
    return len(fields) > 1 and fields[0] in ("0", "63") and int(fields[1], 16) == 0


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_interrupted_while_reading_texts(signum: int, code: int, text_run: Path) -> None:
    if sys.platform != "linux":
        pytest.skip("reads /proc")
    process = subprocess.Popen([sys.executable, "-m", "compact_transformers.cli", "predict", str(text_run), "-"],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not _waits_on_stdin(process.pid):
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()
            time.sleep(0.05)
        process.send_signal(signum)
        out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == code, err
    assert out == "" and err.strip() == f"cct predict: interrupted ({signal.Signals(signum).name})"
