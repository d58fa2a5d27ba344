"""Fault injection: a real `cct train` killed at every write boundary and at random moments, then resumed.

Every time: the resumed run ends with weights bit-identical to the uninterrupted run, `metrics.jsonl` has each
epoch exactly once with the same values, and whatever `last`, `best` and `model/` exist load. Kill points are
the library's named ones (`compact_transformers.faults`, ``CCT_KILL_AT=NAME@N``); SIGTERM and SIGINT are sent
at set-up, mid-epoch and during the final evaluation.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from compact_transformers.models import load_model

pytestmark = pytest.mark.slow

EPOCHS = 3
TRAIN = ["train", "--samples-per-class", "5", "--epochs", str(EPOCHS), "--batch-size", "16", "--device", "cpu",
         "--seed", "1", "--eval-interval", "1", "--quiet"]  # fmt: skip
TIMING_KEYS = {"seconds", "img_per_s", "seq_per_s", "epoch_seconds", "time"}


def cct(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "compact_transformers.cli", *args], capture_output=True, text=True,
                          env=env or ENV, timeout=timeout)  # fmt: skip


def start(*args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "compact_transformers.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env or ENV)  # fmt: skip


# one thread: runs are bit-reproducible across processes, and two can share the machine's cores
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
ENV.pop("CCT_KILL_AT", None)


def records(run: Path) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING_KEYS} for line in lines if line.strip()]


def weights(run: Path) -> dict:
    return load_file(str(run / "model" / "model.safetensors"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    output = tmp_path_factory.mktemp("reference")
    done = cct(*TRAIN, "--output", str(output), "--name", "run")
    assert done.returncode == 0, done.stderr
    return output / "run"


def check_loadable(run: Path) -> None:
    """Whatever a kill left must load (or be absent): the checkpoints and the final model."""
    for directory in (run / "checkpoints" / "last", run / "checkpoints" / "best", run / "model"):
        if directory.exists():
            load_model(directory)
    if (run / "final.json").exists():  # written last: a run with final.json has its model
        load_model(run / "model")


def resume_to_the_end(run: Path) -> None:
    done = cct("train", "--resume", str(run))
    assert done.returncode == 0, done.stderr[-2000:]


def assert_same_as(reference: Path, run: Path) -> None:
    got, expected = records(run), records(reference)
    assert [r["epoch"] for r in got] == list(range(1, EPOCHS + 1)), "every epoch exactly once"
    assert got == expected
    ours, theirs = weights(run), weights(reference)
    assert ours.keys() == theirs.keys()
    assert all((ours[k] == theirs[k]).all() for k in ours), "final weights differ from the uninterrupted run"
    assert json.loads((run / "final.json").read_text())["val"] == json.loads((reference / "final.json").read_text())["val"]
    leftovers = [p.name for p in run.rglob(".*") if p.name not in (".", "..")]
    assert not leftovers, f"temporary files left behind: {leftovers}"
    check_loadable(run)


KILL_POINTS = [
    *(f"last-{stage}@2" for stage in ("model", "state", "complete", "swap", "swapped")),
    *(f"best-{stage}@1" for stage in ("model", "state", "complete", "swap", "swapped")),
    "last-model@1",  # before the first `last` exists (`best` is complete)
    "metrics-append@2", "metrics-appended@2",
    "final-model", "weights-written-.model.tmp", "final-json",
]  # fmt: skip


@pytest.mark.parametrize("point", KILL_POINTS)
def test_sigkill_at_each_write_boundary_then_resume(point: str, reference: Path, tmp_path: Path) -> None:
    killed = cct(*TRAIN, "--output", str(tmp_path), "--name", "run", env={**ENV, "CCT_KILL_AT": point})
    assert killed.returncode == -signal.SIGKILL, f"{point} was never reached: {killed.stderr[-1000:]}"
    run = tmp_path / "run"
    check_loadable(run)
    assert not (run / "final.json").exists()
    resume_to_the_end(run)
    assert_same_as(reference, run)


@pytest.mark.parametrize("seed", range(10))
def test_sigkill_at_random_moments_then_resume(seed: int, reference: Path, tmp_path: Path) -> None:
    rng = random.Random(seed)
    run = tmp_path / "run"
    process = start(*TRAIN, "--output", str(tmp_path), "--name", "run")
    time.sleep(rng.uniform(2.0, 14.0))
    process.kill()
    process.communicate()
    if not (run / "config.yaml").exists():  # killed before the run directory existed: nothing to lose
        shutil.rmtree(run, ignore_errors=True)
        done = cct(*TRAIN, "--output", str(tmp_path), "--name", "run")
        assert done.returncode == 0, done.stderr
    else:
        check_loadable(run)
        resume_to_the_end(run)
    assert_same_as(reference, run)


def wait_for(predicate, process: subprocess.Popen, timeout: float = 120) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not predicate():
        assert process.poll() is None, f"the run ended first: {process.communicate()[1][-1000:]}"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
@pytest.mark.parametrize("moment", ["setup", "mid-epoch", "final-evaluation"])
def test_sigterm_and_sigint_exit_128_plus_signal_with_a_message_and_resume(
    sig: signal.Signals, moment: str, reference: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    if moment == "mid-epoch":  # from outside, as a user would: once the first checkpoint exists
        process = start(*TRAIN, "--output", str(tmp_path), "--name", "run")
        wait_for(lambda: (run / "checkpoints" / "last").exists(), process)
        process.send_signal(sig)
        _, stderr = process.communicate(timeout=120)
        returncode = process.returncode
    else:  # the process signals itself at the named phase
        env = {**ENV, "CCT_KILL_AT": moment, "CCT_KILL_SIGNAL": sig.name.removeprefix("SIG")}
        done = cct(*TRAIN, "--output", str(tmp_path), "--name", "run", env=env)
        stderr, returncode = done.stderr, done.returncode
    if returncode == 0 and moment == "mid-epoch":  # the run finished before the signal arrived
        assert_same_as(reference, run)
        return
    assert returncode == 128 + sig, stderr
    assert "Traceback" not in stderr
    assert f"interrupted ({sig.name})" in stderr or "--resume" in stderr, stderr
    if moment == "final-evaluation":
        assert f"cct train --resume {run}" in stderr
    if (run / "config.yaml").exists():
        check_loadable(run)
        resume_to_the_end(run)
        assert_same_as(reference, run)
