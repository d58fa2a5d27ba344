"""`--log tensorboard`: event files under RUN/tensorboard/ read back with TensorBoard's own reader, a resumed
run that logs each epoch once, the tracker closed whatever ends the run, and the error without tensorboard."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from compact_transformers.cli import main
from compact_transformers.errors import ConfigError
from compact_transformers.training import loop
from compact_transformers.training.recipe import TrainConfig, add_config_arguments, explicit_args
from compact_transformers.training.rundir import load_run_config
from compact_transformers.training.tracking import TensorBoardTracker, Tracker
from tiny_runs import interrupt_at_step, read_records, tiny_config

# the scalars of a validated image run's metrics records, by TensorBoard tag
TAGS = {"train/loss": "train_loss", "train/top1": "train_top1", "train/lr": "lr", "val/loss": "val_loss",
        "val/top1": "val_top1", "val/top5": "val_top5", "speed/img_per_s": "img_per_s",
        "speed/epoch_seconds": "epoch_seconds"}  # fmt: skip


def read_events(log_dir: Path):
    """Every event as written: no purging of steps that TensorBoard would hide, so duplicates show."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 0}, purge_orphaned_data=False)
    return events.Reload()


def assert_scalars_match_records(events, records: list[dict]) -> None:
    assert set(events.Tags()["scalars"]) == set(TAGS)
    for tag, key in TAGS.items():
        scalars = events.Scalars(tag)
        assert [s.step for s in scalars] == [r["epoch"] for r in records], tag  # one per epoch, keyed by epoch
        assert [s.value for s in scalars] == pytest.approx([r[key] for r in records], rel=1e-6), tag  # float32


@pytest.fixture(scope="module")
def logged_run(tmp_path_factory: pytest.TempPathFactory) -> loop.RunResult:
    pytest.importorskip("tensorboard", reason="needs the [log] extra")
    return loop.train(tiny_config(tmp_path_factory.mktemp("runs"), "logged", log="tensorboard"))


def test_event_file_has_one_scalar_per_metric_and_epoch(logged_run: loop.RunResult) -> None:
    records = read_records(logged_run.run_dir)
    assert [r["epoch"] for r in records] == [1, 2]
    assert_scalars_match_records(read_events(logged_run.run_dir / "tensorboard"), records)


def test_event_file_has_the_final_figures(logged_run: loop.RunResult) -> None:
    pytest.importorskip("matplotlib", reason="needs the [plot] extra")
    from PIL import Image

    events = read_events(logged_run.run_dir / "tensorboard")
    assert set(events.Tags()["images"]) == {"curves", "confusion/val"}  # digits have no test split
    for tag, png in (("curves", "curves.png"), ("confusion/val", "confusion_val.png")):
        (image,) = events.Images(tag)
        with Image.open(logged_run.run_dir / png) as written:
            assert (image.step, image.width, image.height) == (2, *written.size)


def test_resumed_run_logs_each_epoch_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("tensorboard", reason="needs the [log] extra")
    with monkeypatch.context() as patch:
        interrupt_at_step(patch, 5)  # mid epoch 2: epoch 1 is logged, epoch 2 runs again after the resume
        first = loop.train(tiny_config(tmp_path, "resumed", log="tensorboard"))
    assert first.interrupted
    run = first.run_dir
    assert [s.step for s in read_events(run / "tensorboard").Scalars("train/loss")] == [1]  # closed, readable

    config = load_run_config(run)
    assert config.log == "tensorboard"  # config.yaml keeps the setting for `cct train --resume`
    second = loop.train(config, run_dir=run, resume=True)
    assert not second.interrupted
    assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) == 2  # appended, not rewritten
    assert_scalars_match_records(read_events(run / "tensorboard"), read_records(run))


def test_tensorboard_tracker_flushes_each_epoch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("tensorboard", reason="needs the [log] extra")
    tracker = TensorBoardTracker()
    tracker.start(tmp_path, epochs_done=0)
    flushes = []
    monkeypatch.setattr(tracker.writer, "flush", lambda flush=tracker.writer.flush: flushes.append(1) or flush())
    tracker.log_epoch({"epoch": 1, "lr": 1e-3, "train_loss": 2.5, "seq_per_s": 300.0, "new_metric": 7.0})
    assert flushes == [1]
    events = read_events(tmp_path / "tensorboard")  # before close: on disk already
    assert set(events.Tags()["scalars"]) == {"train/lr", "train/loss", "speed/seq_per_s", "new_metric"}
    assert events.Scalars("train/loss")[0].value == 2.5
    tracker.close()
    tracker.close()  # a second close does nothing


class RecordingTracker(Tracker):
    def __init__(self) -> None:
        self.epochs: list[int] = []
        self.closed = False

    def log_epoch(self, record: dict) -> None:
        self.epochs.append(record["epoch"])

    def close(self) -> None:
        self.closed = True


def test_tracker_is_closed_when_the_run_is_interrupted_or_fails(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    trackers: list[RecordingTracker] = []
    monkeypatch.setattr(loop, "create_tracker", lambda log: trackers.append(RecordingTracker()) or trackers[-1])
    with monkeypatch.context() as patch:
        interrupt_at_step(patch, 5)
        assert loop.train(tiny_config(tmp_path, "interrupted")).interrupted
    assert trackers[0].epochs == [1] and trackers[0].closed

    def failing_validation(*_: object, **__: object) -> None:
        raise RuntimeError("validation failed")

    monkeypatch.setattr(loop, "evaluate_split", failing_validation)
    with pytest.raises(RuntimeError, match="validation failed"):
        loop.train(tiny_config(tmp_path, "failed"))
    assert trackers[1].epochs == [] and trackers[1].closed


def test_missing_tensorboard_is_a_one_line_error_before_the_run_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # `import` now raises ImportError
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    with pytest.raises(ConfigError, match=r"pip install 'compact-transformers\[log\]'"):
        loop.train(tiny_config(tmp_path, "no_tensorboard", log="tensorboard"))
    assert not (tmp_path / "no_tensorboard").exists()

    code = main(["train", "--log", "tensorboard", "--epochs", "1", "--device", "cpu", "--output", str(tmp_path),
                 "--name", "cli"])  # fmt: skip
    assert code == 2 and not (tmp_path / "cli").exists()
    assert capsys.readouterr().err.splitlines() == [
        "cct train: error: --log tensorboard needs the tensorboard package: pip install 'compact-transformers[log]'"
    ]


def test_log_option_is_validated_and_none_by_default() -> None:
    import argparse

    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    assert TrainConfig().log is None
    assert explicit_args(parser.parse_args(["--log", "tensorboard"])) == {"log": "tensorboard"}
    assert TrainConfig().replace(**explicit_args(parser.parse_args(["--log", "none"]))).log is None
    with pytest.raises(ConfigError, match="log must be one of tensorboard or none, got 'wandb'"):
        TrainConfig(log="wandb")
    assert "--log NAME" in parser.format_help() and "[log]" in parser.format_help()
