"""`cct train / eval / predict / info` on text: the same engine as images, end to end on corpora the tests write."""

from __future__ import annotations

import csv
import json
import random
import shutil
from pathlib import Path

import pytest

from compact_transformers.cli import main
from compact_transformers.training import loop
from compact_transformers.training.rundir import load_run_config, read_history
from tiny_runs import interrupt_at_step

FILLERS = "the a of to and in is it that was for on are with as his they be at one have this from".split()


def write_word_order_task(folder: Path, train: int = 2000, test: int = 400, seed: int = 0) -> Path:
    """Texts of the same bag of words whose class is only in their order: "alpha" before "beta" or after it.
    No bag-of-words model can beat chance on it."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for name, count in (("train", train), ("test", test)):
        rows = []
        for _ in range(count):
            words = rng.choices(FILLERS, k=6)
            first, second = sorted(rng.sample(range(8), 2))
            a_first = rng.random() < 0.5
            words.insert(first, "alpha" if a_first else "beta")
            words.insert(second, "beta" if a_first else "alpha")
            rows.append((" ".join(words), "alpha-first" if a_first else "beta-first"))
        with open(folder / f"{name}.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["text", "label"])
            writer.writerows(rows)
    return folder


TEXT_TRAIN = ["--model", "text_cct_2_2x1", "--device", "cpu", "--quiet", "--seed", "0"]


@pytest.fixture(scope="module")
def order_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("text")
    data = write_word_order_task(root / "order")
    assert main(["train", "--data", str(data), *TEXT_TRAIN, "--epochs", "8", "--output", str(root / "runs"),
                 "--name", "order"]) == 0  # fmt: skip
    return root / "runs" / "order"


def predictions(capsys: pytest.CaptureFixture, *argv: str) -> list[dict]:
    capsys.readouterr()
    assert main(["predict", *argv, "--json", "--top-k", "2"]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_a_text_model_learns_a_task_that_needs_word_order(order_run: Path) -> None:
    final = json.loads((order_run / "final.json").read_text())
    assert final["val"]["count"] == 400  # the test file, as validation (no val_fraction)
    assert final["val"]["top1"] >= 95.0, final["val"]
    config = load_run_config(order_run)
    assert config.seq_len is None  # chosen from the data: 8 words fit whole
    records = read_history(order_run)
    assert "seq_per_s" in records[0] and "img_per_s" not in records[0]


def test_predict_is_invariant_to_the_padding_of_a_batch(order_run: Path, capsys: pytest.CaptureFixture) -> None:
    sentence = "the alpha of to beta and in is"
    longer = "a " * 30 + "beta alpha"  # longer than the first: the first is padded in the batch
    alone = predictions(capsys, str(order_run), sentence, "--fp32")
    batched = predictions(capsys, str(order_run), sentence, longer, "--fp32")
    assert alone[0]["text"] == batched[0]["text"] == sentence
    assert alone[0]["predictions"][0]["label"] == "alpha-first"
    for a, b in zip(alone[0]["predictions"], batched[0]["predictions"]):
        assert a["label"] == b["label"] and a["probability"] == pytest.approx(b["probability"], abs=1e-5)


def test_a_saved_text_model_predicts_from_its_directory_alone(order_run: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture) -> None:
    alone = tmp_path / "shipped"
    shutil.copytree(order_run / "model", alone)  # no run directory, no data: the vocabulary travels with it
    lines = tmp_path / "lines.txt"
    lines.write_text("the beta a alpha of\nalpha beta the the the\n")
    out = predictions(capsys, str(alone), "--file", str(lines))
    assert [row["predictions"][0]["label"] for row in out] == ["beta-first", "alpha-first"]
    assert abs(sum(p["probability"] for p in out[0]["predictions"]) - 1.0) < 1e-4  # 2 classes, top-2


def test_a_text_run_without_a_positional_embedding(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = write_word_order_task(tmp_path / "order", train=300, test=60)
    assert main(["train", "--data", str(data), *TEXT_TRAIN, "--epochs", "1", "--positional-embedding", "none",
                 "--output", str(tmp_path), "--name", "nope"]) == 0  # fmt: skip
    run = tmp_path / "nope"
    assert json.loads((run / "model" / "config.json").read_text())["positional_embedding"] == "none"
    assert load_run_config(run).positional_embedding == "none"
    sentence = "the alpha of to beta"
    alone = predictions(capsys, str(run), sentence, "--fp32")
    batched = predictions(capsys, str(run), sentence, "a " * 30 + "beta alpha", "--fp32")
    for a, b in zip(alone[0]["predictions"], batched[0]["predictions"]):  # masks still hide the padding
        assert a["label"] == b["label"] and a["probability"] == pytest.approx(b["probability"], abs=1e-5)


def test_eval_of_a_text_run(order_run: Path, capsys: pytest.CaptureFixture) -> None:
    capsys.readouterr()
    assert main(["eval", str(order_run), "--json"]) == 0  # the data path comes from the run
    report = json.loads(capsys.readouterr().out)
    final = json.loads((order_run / "final.json").read_text())
    assert report["count"] == 400 and report["top1"] == pytest.approx(final["val"]["top1"], abs=0.5)
    assert report["classes"] == ["alpha-first", "beta-first"]


def test_info_counts_text_models_without_their_embedding(capsys: pytest.CaptureFixture) -> None:
    assert main(["info", "text_cct_2_1x1", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["params"] == 237_701 and row["embedding_params"] == 100_000 * 300  # paper: 0.238M


@pytest.mark.parametrize("mixing", [[], ["--cutmix", "1", "--mixup-prob", "0.5", "--positional-embedding", "none"]],
                         ids=["plain", "cutmix"])
def test_resume_of_an_interrupted_text_run_is_bit_identical(mixing: list[str], tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    data = write_word_order_task(tmp_path / "order", train=300, test=60)
    argv = ["train", "--data", str(data), *TEXT_TRAIN, *mixing, "--epochs", "2", "--output", str(tmp_path / "runs")]
    assert main([*argv, "--name", "whole"]) == 0
    with monkeypatch.context() as patch:
        interrupt_at_step(patch, 6)  # mid-way through epoch 2 (4 steps of 64 per epoch)
        assert main([*argv, "--name", "split"]) == 130
    split = tmp_path / "runs" / "split"
    assert not (split / "final.json").exists()
    assert main(["train", "--resume", str(split), "--quiet"]) == 0
    whole = tmp_path / "runs" / "whole"
    for name in ("checkpoints/last/model.safetensors", "model/model.safetensors"):
        assert (split / name).read_bytes() == (whole / name).read_bytes(), name
    strip = lambda records: [{k: v for k, v in r.items() if k not in ("seq_per_s", "epoch_seconds")} for r in records]  # noqa: E731
    assert strip(read_history(split)) == strip(read_history(whole))
    assert load_run_config(whole).cutmix == (1.0 if mixing else 0.0)


def test_a_time_limited_text_run_plans_and_finishes(tmp_path: Path) -> None:
    data = write_word_order_task(tmp_path / "order", train=300, test=60)
    assert main(["train", "--data", str(data), *TEXT_TRAIN, "--time-limit", "0.3", "--output", str(tmp_path),
                 "--name", "timed"]) == 0  # fmt: skip
    config = load_run_config(tmp_path / "timed")
    assert config.epochs >= 1 and config.time_limit == 0.3
    assert json.loads((tmp_path / "timed" / "final.json").read_text())["epochs"] >= 1


def test_text_data_with_an_image_model_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = write_word_order_task(tmp_path / "order", train=40, test=10)
    assert main(["train", "--data", str(data), "--model", "cct_2_3x2_32", "--output", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "text model" in err[0]
    assert not any(tmp_path.glob("cct_2_3x2_32*"))  # no run directory was made


def test_loop_sees_text_batches_trimmed_to_their_longest_text(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = write_word_order_task(tmp_path / "order", train=128, test=16)
    widths = []
    original = loop.train_step

    def recording(model, batch, tools, step):
        widths.append((batch.inputs.shape[1], int(batch.mask.sum(dim=1).max())))
        return original(model, batch, tools, step)

    monkeypatch.setattr(loop, "train_step", recording)
    assert main(["train", "--data", str(data), *TEXT_TRAIN, "--epochs", "1", "--seq-len", "64",
                 "--output", str(tmp_path)]) == 0  # fmt: skip
    assert widths and all(width == longest == 8 for width, longest in widths)  # 8 words, not --seq-len 64
