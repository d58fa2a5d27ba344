"""Named kill points for the fault-injection tests (``tests/faults``).

``CCT_KILL_AT=NAME[@N]`` makes the process SIGKILL itself the N-th time (default: the first) it passes the
point ``NAME``: a crash at an exact write boundary, reproducible, with no test code inside the library.
``CCT_KILL_SIGNAL=TERM`` (or INT) sends that signal instead, to test the graceful paths at the same points.
Unset (always, outside those tests) a point costs one comparison. The points are listed in ``KILL_POINTS``.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

KILL_POINTS = (
    # a checkpoint (NAME = last or best): its files written, renamed complete, between the swap's renames, swapped
    "{name}-model", "{name}-state", "{name}-complete", "{name}-swap", "{name}-swapped",
    # an epoch's record: before and after its append to metrics.jsonl
    "metrics-append", "metrics-appended",
    # the end of the run: before model/, between model/'s weights and config (in .model.tmp), before final.json
    "final-model", "weights-written-.model.tmp", "final-json",
    # phases, for signals: set-up (data loaded, nothing trained), the final evaluation
    "setup", "final-evaluation",
)  # fmt: skip

_TARGET = os.environ.get("CCT_KILL_AT")
_passed: Counter[str] = Counter()


def kill_point(name: str) -> None:
    """SIGKILL this process here if ``CCT_KILL_AT`` names this point (and this is its N-th pass)."""
    if _TARGET is None:
        return
    target, _, count = _TARGET.partition("@")
    if name != target:
        return
    _passed[name] += 1
    if _passed[name] == int(count or 1):
        os.kill(os.getpid(), signal.Signals[f"SIG{os.environ.get('CCT_KILL_SIGNAL', 'KILL')}"])
