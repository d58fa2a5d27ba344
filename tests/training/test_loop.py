"""The training loop end to end on the bundled digits: run directory, resume bit-for-bit after an
interruption (at an epoch boundary and mid-epoch), fine-tuning from a saved run, distillation, subsets."""

from __future__ import annotations

import io
import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from compact_transformers.models import create_model, load_model
from compact_transformers.models.weights import save_model
from compact_transformers.training import budget, build, loop
from compact_transformers.training.distributed import DistInfo
from compact_transformers.training.recipe import TrainConfig
from compact_transformers.training.rundir import load_run_config
from compact_transformers.training.state import load_state
from tiny_runs import MODEL, interrupt_at_step, read_records, tiny_config

TIMING_KEYS = ("img_per_s", "epoch_seconds")  # the only record fields allowed to differ between runs
RECORD_KEYS = {"epoch", "lr", "train_loss", "train_top1", "img_per_s", "epoch_seconds", "val_loss", "val_top1",
               "val_top5"}  # fmt: skip


def without_timing(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in records]


def assert_same_weights(a: Path, b: Path) -> None:
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()


def assert_same_optimizer(a: Path, b: Path) -> None:
    state_a, state_b = load_state(a)["optimizer"]["state"], load_state(b)["optimizer"]["state"]
    assert state_a.keys() == state_b.keys()
    for key in state_a:
        for name, value in state_a[key].items():
            assert torch.equal(value, state_b[key][name]), f"optimizer state {key}.{name} differs"


def assert_no_leftovers(run_dir: Path) -> None:
    """Nothing half-written: no hidden temp files or directories anywhere in the run."""
    hidden = [p for p in run_dir.rglob(".*")]
    assert hidden == [], f"temporary files left behind: {hidden}"
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) in (["best", "last"], ["last"])


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory) -> loop.RunResult:
    """An uninterrupted 2-epoch run."""
    return loop.train(tiny_config(tmp_path_factory.mktemp("runs"), "baseline"))


def test_run_directory_has_every_artefact(baseline: loop.RunResult) -> None:
    run = baseline.run_dir
    assert baseline.epochs_done == 2 and not baseline.interrupted
    for name in ("config.yaml", "metrics.jsonl", "final.json", "checkpoints/last", "checkpoints/best", "model"):
        assert (run / name).exists(), f"{name} missing from the run directory"
    pytest.importorskip("matplotlib")
    assert (run / "curves.png").stat().st_size > 0
    assert (run / "confusion_val.png").stat().st_size > 0


def test_run_records_and_final_report_agree(baseline: loop.RunResult) -> None:
    run = baseline.run_dir
    records = read_records(run)
    assert [r["epoch"] for r in records] == [1, 2]
    assert all(set(r) == RECORD_KEYS for r in records)
    final = json.loads((run / "final.json").read_text())
    assert final["epochs"] == 2
    assert final["val"]["count"] == 359  # the 20% digits validation split
    assert final["val"]["top1"] == pytest.approx(records[-1]["val_top1"])
    assert final["best_val_top1"] == pytest.approx(max(r["val_top1"] for r in records))
    assert set(final["val_per_class"]) == {str(d) for d in range(10)}
    # the saved config reloads to the config that was trained
    assert load_run_config(run) == tiny_config(Path(run.parent), "baseline")


def test_checkpoints_and_final_model_are_loadable(baseline: loop.RunResult) -> None:
    run = baseline.run_dir
    last = load_state(run / "checkpoints" / "last")
    assert (last["epoch"], last["step_in_epoch"], last["partial"]) == (2, 0, None)
    best = load_state(run / "checkpoints" / "best")
    assert best["best_top1"] == pytest.approx(baseline.best_top1)
    # the final model is the last checkpoint's weights, with the dataset's classes in its config
    assert_same_weights(run / "model", run / "checkpoints" / "last")
    model = load_model(run / "model")
    assert model.config.extra["classes"] == [str(d) for d in range(10)]
    assert model.config.img_size == (16, 16) and model.config.in_chans == 1
    assert_no_leftovers(run)


def test_resume_after_interrupt_at_epoch_end_is_bit_identical(
    baseline: loop.RunResult, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tiny_config(tmp_path, "split")
    with monkeypatch.context() as patch:
        interrupt_at_step(patch, 3)  # the last step of epoch 1
        first = loop.train(config)
    assert first.interrupted and first.epochs_done == 1
    run = first.run_dir
    # a valid `last` checkpoint at the boundary, the epoch's record, and no final artefacts yet
    state = load_state(run / "checkpoints" / "last")
    assert (state["epoch"], state["step_in_epoch"]) == (1, 0)
    assert load_model(run / "checkpoints" / "last").config.num_classes == 10
    assert [r["epoch"] for r in read_records(run)] == [1]
    assert not (run / "final.json").exists()
    assert_no_leftovers(run)

    second = loop.train(load_run_config(run), run_dir=run, resume=True)
    assert not second.interrupted and second.epochs_done == 2
    assert_same_weights(run / "checkpoints" / "last", baseline.run_dir / "checkpoints" / "last")
    assert_same_optimizer(run / "checkpoints" / "last", baseline.run_dir / "checkpoints" / "last")
    assert without_timing(read_records(run)) == without_timing(read_records(baseline.run_dir))
    assert (run / "final.json").exists()
    assert_no_leftovers(run)


def test_resume_after_interrupt_mid_epoch_is_bit_identical(
    baseline: loop.RunResult, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tiny_config(tmp_path, "mid")
    with monkeypatch.context() as patch:
        interrupt_at_step(patch, 5)  # step 2 of 3 in epoch 2
        first = loop.train(config)
    assert first.interrupted and first.epochs_done == 1
    run = first.run_dir
    state = load_state(run / "checkpoints" / "last")
    assert (state["epoch"], state["step_in_epoch"]) == (1, 2)
    assert state["partial"]["count"].item() == 32  # the running sums of the two steps done
    assert [r["epoch"] for r in read_records(run)] == [1]
    assert_no_leftovers(run)

    second = loop.train(load_run_config(run), run_dir=run, resume=True)
    assert not second.interrupted and second.epochs_done == 2
    assert_same_weights(run / "checkpoints" / "last", baseline.run_dir / "checkpoints" / "last")
    # the epoch's training loss combines the steps before and after the interruption
    assert without_timing(read_records(run)) == without_timing(read_records(baseline.run_dir))
    assert_no_leftovers(run)


def test_resume_without_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no training checkpoint"):
        loop.train(tiny_config(tmp_path, "x"), run_dir=tmp_path / "nothing", resume=True)


def test_stop_flag_turns_signals_into_a_flag_and_restores_handlers() -> None:
    before = signal.getsignal(signal.SIGINT)
    with loop._StopFlag() as stop:
        assert stop.signal is None
        signal.raise_signal(signal.SIGTERM)
        assert stop.signal == signal.SIGTERM
        with pytest.raises(KeyboardInterrupt):  # a second signal gives up at once
            signal.raise_signal(signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before


def test_samples_per_class_is_exact_and_reproducible(tmp_path: Path) -> None:
    config = tiny_config(tmp_path, "x").replace(samples_per_class=10)
    first, again = build.load_training_data(config), build.load_training_data(config)
    assert torch.bincount(first.train.labels, minlength=10).tolist() == [10] * 10
    assert torch.equal(first.train.images, again.train.images)
    other = build.load_training_data(config.replace(seed=1))
    assert not torch.equal(first.train.images, other.train.images)
    assert len(first.val) == 359  # validation is never subsampled


def test_pretrained_run_into_larger_images_resizes_positional_embedding(
    baseline: loop.RunResult, tmp_path: Path
) -> None:
    config = tiny_config(tmp_path, "x", img_size=24, pretrained=str(baseline.run_dir))
    data = build.load_training_data(config)
    model = build.build_student(config, data, (24, 24))
    source = load_file(str(baseline.run_dir / "model" / "model.safetensors"))
    own = model.state_dict()
    assert source["classifier.positional_emb"].shape[1] == 16  # 4x4 tokens at 16 px
    assert own["classifier.positional_emb"].shape[1] == 36  # 6x6 tokens at 24 px
    for key in ("tokenizer.conv_layers.0.0.weight", "classifier.fc.weight", "classifier.blocks.1.linear1.weight"):
        assert torch.equal(own[key], source[key]), key


def test_positional_embedding_option_overrides_the_preset(tmp_path: Path) -> None:
    config = tiny_config(tmp_path, "x", positional_embedding="none")
    data = build.load_training_data(config)
    model = build.build_student(config, data, (16, 16))
    assert model.config.positional_embedding == "none"
    assert not any("positional" in key for key in model.state_dict())
    own = build.build_student(config.replace(positional_embedding="model"), data, (16, 16))
    assert own.config.positional_embedding == "learnable" and "classifier.positional_emb" in own.state_dict()
    sine = build.build_student(config.replace(positional_embedding="sine"), data, (16, 16))
    assert sine.config.positional_embedding == "sine"


def test_pretrained_with_other_class_count_replaces_head_with_warning(tmp_path: Path) -> None:
    source_model = create_model(MODEL, num_classes=5, in_chans=1, img_size=(16, 16))
    save_model(source_model, tmp_path / "five")
    config = tiny_config(tmp_path, "x", pretrained=str(tmp_path / "five"))
    data = build.load_training_data(config)
    with pytest.warns(UserWarning, match="head"):
        model = build.build_student(config, data, (16, 16))
    assert model.classifier.fc.weight.shape == (10, 128)
    source = source_model.state_dict()
    own = model.state_dict()
    assert torch.equal(own["tokenizer.conv_layers.1.0.weight"], source["tokenizer.conv_layers.1.0.weight"])
    assert torch.equal(own["classifier.positional_emb"], source["classifier.positional_emb"])


def test_mean_of_other_channel_count_fails_before_the_run_directory(tmp_path: Path) -> None:
    config = tiny_config(tmp_path, "rgb_mean", mean=(0.5, 0.5, 0.5), std=(0.2, 0.2, 0.2))
    with pytest.raises(ValueError, match="1 channel"):
        loop.train(config)
    assert not (tmp_path / "rgb_mean").exists()


def test_distillation_from_a_teacher_run(baseline: loop.RunResult, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"forward": 0}
    load_teacher = build.load_teacher

    def counting_teacher(source: str, device: torch.device) -> torch.nn.Module:
        teacher = load_teacher(source, device)
        teacher.register_forward_hook(lambda *_: calls.__setitem__("forward", calls["forward"] + 1))
        return teacher

    monkeypatch.setattr(loop, "load_teacher", counting_teacher)
    result = loop.train(tiny_config(tmp_path, "student", epochs=1, teacher=str(baseline.run_dir)))
    assert not result.interrupted and result.epochs_done == 1
    assert calls["forward"] == 3  # one teacher forward per training step
    record = read_records(result.run_dir)[0]
    assert torch.isfinite(torch.tensor(record["train_loss"]))
    # the teacher is the run's best checkpoint, frozen
    teacher = build.load_teacher(str(baseline.run_dir), torch.device("cpu"))
    assert not any(p.requires_grad for p in teacher.parameters()) and not teacher.training
    best = load_file(str(baseline.run_dir / "checkpoints" / "best" / "model.safetensors"))
    assert all(torch.equal(value, best[key]) for key, value in teacher.state_dict().items())


def test_time_limit_stops_early_and_finishes_the_run(tmp_path: Path) -> None:
    result = loop.train(tiny_config(tmp_path, "short", epochs=3, time_limit=1e-6))  # over after one step
    assert not result.interrupted and result.epochs_done == 1
    (record,) = read_records(result.run_dir)
    assert record["epoch"] == 1 and "val_top1" in record
    assert json.loads((result.run_dir / "final.json").read_text())["epochs"] == 1
    assert_no_leftovers(result.run_dir)


def test_fit_schedule_shrinks_epochs_warmup_and_cooldown() -> None:
    config = TrainConfig(epochs=300, warmup_epochs=10, cooldown_epochs=10, time_limit=10.0)

    def fit(config: TrainConfig, elapsed: float, max_epochs: int | None = None) -> dict | None:
        return budget.fit_schedule(config, budget_seconds=600.0, elapsed=elapsed, epoch_seconds=6.0,
                                   max_epochs=max_epochs)

    # 600 s budget (98% used): the first epoch took 12 s, the others will take 6 s -> 1 + 96 epochs
    assert fit(config, elapsed=12.0) == {"epochs": 97, "warmup_epochs": 3, "cooldown_epochs": 3}
    assert budget.fit_schedule(config, budget_seconds=600.0, elapsed=1.0, epoch_seconds=0.01) is None  # all fit
    assert fit(config, elapsed=900.0)["epochs"] == 1  # over already
    # an epoch of which half or more fits is planned too (the clock ends it); less than half is not
    assert fit(config, elapsed=12.0 - 0.6 * 6.0)["epochs"] == 98  # 96.6 epochs' time left
    assert fit(config, elapsed=12.0 - 0.4 * 6.0)["epochs"] == 97  # 96.4
    # epochs planned from the budget grow back when the first epoch was faster than the probe said, up to
    # max_epochs; chosen epochs are only ever shrunk
    planned = TrainConfig(epochs=40, warmup_epochs=2, cooldown_epochs=2, time_limit=10.0)
    assert fit(planned, elapsed=12.0) is None
    assert fit(planned, elapsed=12.0, max_epochs=300) == {"epochs": 97, "warmup_epochs": 2, "cooldown_epochs": 2}
    assert fit(planned, elapsed=12.0, max_epochs=60)["epochs"] == 60
    assert fit(planned, elapsed=12.0, max_epochs=40) is None


def test_time_limited_run_grows_planned_epochs_only_up_to_max_epochs(tmp_path: Path) -> None:
    # tiny epochs take well under a second: a 100-minute budget fits many more than were planned
    planned = budget.TimeBudget(100.0)
    planned.max_epochs = 4
    grown = loop.train(tiny_config(tmp_path, "grown", epochs=2, time_limit=100.0), budget=planned)
    assert grown.epochs_done == 4 and read_records(grown.run_dir)[-1]["epoch"] == 4
    chosen = loop.train(tiny_config(tmp_path, "chosen", epochs=2, time_limit=100.0))
    assert chosen.epochs_done == 2


def test_plan_eval_interval_keeps_validation_to_a_small_share() -> None:
    assert budget.plan_eval_interval(budget.EpochEstimate(train_seconds=100.0, eval_seconds=2.0)) == 1
    assert budget.plan_eval_interval(budget.EpochEstimate(train_seconds=100.0, eval_seconds=4.0)) == 1  # exactly 4%
    assert budget.plan_eval_interval(budget.EpochEstimate(train_seconds=100.0, eval_seconds=11.0)) == 3
    assert budget.EpochEstimate(100.0, 12.0).per_epoch(3) == pytest.approx(104.0)


def test_time_limited_run_validates_first_every_kth_and_last_epoch(tmp_path: Path) -> None:
    result = loop.train(tiny_config(tmp_path, "sparse", epochs=5, eval_interval=3, time_limit=100.0))
    validated = [r["epoch"] for r in read_records(result.run_dir) if "val_top1" in r]
    assert validated == [1, 3, 5]  # the first (to time validation for the plan), every 3rd, the last
    plain = loop.train(tiny_config(tmp_path, "plain", epochs=5, eval_interval=3))
    assert [r["epoch"] for r in read_records(plain.run_dir) if "val_top1" in r] == [3, 5]


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_only_on_a_terminal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tiny_config(tmp_path, "x").replace(quiet=False)
    monkeypatch.setattr(sys, "stderr", Terminal())
    bar = loop._progress(config, DistInfo(), epoch=0, steps=3, start=0)
    assert bar is not None and bar.total == 3
    bar.close()
    assert loop._progress(config.replace(quiet=True), DistInfo(), epoch=0, steps=3, start=0) is None
    assert loop._progress(config, DistInfo(rank=1, world_size=2), epoch=0, steps=3, start=0) is None
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # a log file: no bar
    assert loop._progress(config, DistInfo(), epoch=0, steps=3, start=0) is None


def test_cct_train_into_a_log_file_writes_one_line_per_epoch_and_no_carriage_returns(tmp_path: Path) -> None:
    log = tmp_path / "train.log"
    with open(log, "w") as stderr:  # as `cct train > train.log 2>&1`, or a CI log
        subprocess.run([sys.executable, "-m", "compact_transformers.cli", "train", "--model", MODEL, "--epochs", "2",
                        "--samples-per-class", "5", "--batch-size", "16", "--device", "cpu",
                        "--output", str(tmp_path), "--name", "logged"], stderr=stderr, check=True)  # fmt: skip
    text = log.read_bytes().decode()  # read_text() would turn carriage returns into newlines
    assert "\r" not in text
    assert len(re.findall(r"^epoch \d+/2 \| loss ", text, flags=re.MULTILINE)) == 2, text
    assert (tmp_path / "logged" / "final.json").exists()


@pytest.mark.slow
def test_cct2_reaches_90_percent_on_digits_with_the_default_settings(tmp_path: Path) -> None:
    from compact_transformers.cli import main

    # `cct train` with its defaults (recipe "digits": 30 epochs reach ~100%), shortened to 5 epochs
    assert main(["train", "--epochs", "5", "--seed", "0", "--output", str(tmp_path), "--name", "digits",
                 "--quiet"]) == 0  # fmt: skip
    final = json.loads((tmp_path / "digits" / "final.json").read_text())
    assert final["val"]["count"] == 359
    assert final["val"]["top1"] >= 90.0, final["val"]
