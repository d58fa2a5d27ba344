"""Out-of-range and misplaced options of `cct train / eval / predict / info / convert`: each is refused with one
line naming the option and what it accepts, before a run directory is made."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

TINY = ["--samples-per-class", "5", "--epochs", "1", "--batch-size", "16", "--quiet", "--device", "cpu"]

# options -> words the error must hold (digits, the default data)
TRAIN_OPTIONS: dict[str, tuple[list[str], tuple[str, ...]]] = {
    "lr 0": (["--lr", "0"], ("lr", "> 0")),
    "lr -1": (["--lr", "-1"], ("lr", "> 0")),
    "lr nan": (["--lr", "nan"], ("lr", "finite")),
    "lr inf": (["--lr", "inf"], ("lr", "finite")),
    "lr word": (["--lr", "fast"], ("--lr", "'fast'")),
    "epochs 0": (["--epochs", "0"], ("epochs", ">= 1")),
    "epochs -3": (["--epochs", "-3"], ("epochs", ">= 1")),
    "epochs 2.5": (["--epochs", "2.5"], ("--epochs", "'2.5'")),
    "batch size 0": (["--batch-size", "0"], ("batch_size", ">= 1")),
    "batch size -8": (["--batch-size", "-8"], ("batch_size", ">= 1")),
    "img size 0": (["--img-size", "0"], ("img_size", ">= 1")),
    "img size -5": (["--img-size", "-5"], ("img_size", ">= 1")),
    "val fraction 1.5": (["--val-fraction", "1.5"], ("val_fraction", "[0, 1)")),
    "val fraction 1": (["--val-fraction", "1"], ("val_fraction", "[0, 1)")),
    "val fraction -0.1": (["--val-fraction", "-0.1"], ("val_fraction", "[0, 1)")),
    "samples per class 0": (["--samples-per-class", "0"], ("samples_per_class", ">= 1")),
    "samples per class 1000": (["--samples-per-class", "1000"], ("samples_per_class", "1000", "at most")),
    "time limit -1": (["--time-limit", "-1"], ("time_limit", "> 0")),
    "time limit 0": (["--time-limit", "0"], ("time_limit", "> 0")),
    "mixup -1": (["--mixup", "-1"], ("mixup", ">= 0")),
    "cutmix -0.5": (["--cutmix", "-0.5"], ("cutmix", ">= 0")),
    "seed abc": (["--seed", "abc"], ("--seed", "'abc'")),
    "workers -1": (["--workers", "-1"], ("workers", ">= 0")),
    "eval interval 0": (["--eval-interval", "0"], ("eval_interval", ">= 1")),
    "drop path 1.5": (["--drop-path", "1.5"], ("drop_path", "[0, 1)")),
    "hflip 2": (["--hflip", "2"], ("hflip", "[0, 1]")),
    "smoothing 1": (["--smoothing", "1"], ("smoothing", "[0, 1)")),
    "clip grad 0": (["--clip-grad", "0"], ("clip_grad", "> 0")),
    "betas one value": (["--betas", "0.9"], ("betas", "two values")),
    "warmup longer than the run": (["--warmup-epochs", "5"], ("warmup_epochs", "epochs")),
    "num classes 3 for digits": (["--num-classes", "3"], ("num_classes", "10")),
    "optimizer lamb": (["--opt", "lamb"], ("opt", "adamw")),
    "schedule step": (["--sched", "step"], ("sched", "cosine")),
    "interpolation lanczos": (["--interpolation", "lanczos"], ("interpolation", "bicubic")),
    "log wandb": (["--log", "wandb"], ("log", "tensorboard")),
    "recipe bogus": (["--recipe", "bogus"], ("recipe", "'bogus'", "paper")),
    "device tpu": (["--device", "tpu"], ("device", "'tpu'", "cpu")),
    "device cuda without a GPU": (["--device", "cuda"], ("cuda", "--device cpu")),
    "device cuda:3 without a GPU": (["--device", "cuda:3"], ("cuda:3", "--device cpu")),
    "device gpu0": (["--device", "gpu0"], ("device", "'gpu0'")),
    "model typo": (["--model", "cct_2_3x2_3"], ("cct_2_3x2_3", "did you mean", "cct_2_3x2_32")),
    "model unknown": (["--model", "resnet50"], ("resnet50", "cct info")),
    "model family only": (["--model", "cct"], ("'cct'",)),
    "text model on images": (["--model", "text_cct_2_1x1"], ("text_cct_2_1x1", "image model")),
    "name ../../escape": (["--name", "../../escape"], ("--name", "single folder name")),
    "name a/b": (["--name", "a/b"], ("--name", "single folder name")),
    "dataset unknown": (["--dataset", "imagenet"], ("imagenet", "known names")),
    "embeddings on images": (["--embeddings", "glove.6B.50d.txt"], ("--embeddings", "text only")),
    "seq len on images": (["--seq-len", "64"], ("--seq-len", "text only")),
    "vocabulary options on images": (["--min-freq", "2", "--max-vocab", "100"], ("--min-freq", "--max-vocab")),
    "word dropout on images": (["--word-dropout", "0.1"], ("--word-dropout", "text only")),
    "text column on images": (["--text-column", "body"], ("--text-column", "text only")),
    "train embeddings on images": (["--train-embeddings"], ("--train-embeddings", "text only")),
    "resume with a recipe": (["--resume", "somewhere", "--recipe", "paper"], ("--resume", "--recipe")),
}


@pytest.mark.parametrize("case", list(TRAIN_OPTIONS))
def test_train_refuses(case: str, tmp_path: Path, cct, check) -> None:
    options, needles = TRAIN_OPTIONS[case]
    outcome = cct("train", *TINY, *options, "--output", tmp_path / "runs")
    outcome.error_line("train", *needles)
    check.no_run_made(tmp_path / "runs")


@pytest.mark.parametrize("options", [["--img-size", "32"], ["--aa", "rand-m9-mstd0.5-inc1"], ["--mixup", "0.8"],
                                     ["--hflip", "0.5"], ["--translate", "2"], ["--mean", "0.5"], ["--flip-tta"],
                                     ["--shift-tta", "1"]])
def test_image_options_on_text_data(options: list[str], text_data: Path, tmp_path: Path, cct, check) -> None:
    outcome = cct("train", "--data", text_data, "--epochs", "1", "--device", "cpu", *options,
                  "--output", tmp_path / "runs")  # fmt: skip
    outcome.error_line("train", options[0], "images only", "text")
    check.no_run_made(tmp_path / "runs")


def test_teacher_on_text_data(text_data: Path, digits_run: Path, tmp_path: Path, cct, check) -> None:
    outcome = cct("train", "--data", text_data, "--epochs", "1", "--device", "cpu", "--teacher", digits_run,
                  "--output", tmp_path / "runs")  # fmt: skip
    outcome.error_line("train", "--teacher", "images only")
    check.no_run_made(tmp_path / "runs")


def test_text_options_with_a_missing_data_path_name_the_path(tmp_path: Path, cct) -> None:
    outcome = cct("train", "--data", tmp_path / "nowhere", "--seq-len", "64", "--output", tmp_path / "runs")
    outcome.error_line("train", str(tmp_path / "nowhere"))


def test_output_that_is_a_file(tmp_path: Path, cct) -> None:
    (tmp_path / "runs").write_text("a file where the runs folder should be")
    outcome = cct("train", *TINY, "--output", tmp_path / "runs")
    outcome.error_line("train", "--output", str(tmp_path / "runs"), "folder")
    assert (tmp_path / "runs").read_text() == "a file where the runs folder should be"


# ---------------------------------------------------------------------------------------- diverging


@pytest.mark.parametrize("lr", ["1e6", "1e3"])
def test_a_diverging_learning_rate_leaves_valid_records(lr: str, tmp_path: Path, cct, check) -> None:
    """Training stops with one line (or ends, if it never reached NaN); metrics.jsonl stays strict JSON (NaN as
    null) and an epoch whose validation loss is not finite is never the best checkpoint."""
    from compact_transformers.training.state import load_state

    outcome = cct("train", *TINY, "--epochs", "2", "--lr", lr, "--output", tmp_path, "--name", "run")
    if outcome.code != 0:  # here: 1e6 diverges in the first epoch, 1e3 in the second after a NaN validation
        outcome.error_line("train", "diverged", "--lr")
    run = tmp_path / "run"
    records = check.json_lines(run / "metrics.jsonl")
    finite = [record["epoch"] for record in records if record.get("val_loss") is not None]
    best = run / "checkpoints" / "best"
    assert best.exists() == bool(finite)
    if best.exists():
        assert load_state(best)["epoch"] in finite


# --------------------------------------------------------------------------------------- eval, predict


EVAL_OPTIONS: dict[str, tuple[list[str], tuple[str, ...]]] = {
    "device tpu": (["--device", "tpu"], ("'tpu'",)),
    "device cuda": (["--device", "cuda"], ("cuda", "--device cpu")),
    "batch size 0": (["--batch-size", "0"], ("--batch-size", ">= 1")),
    "val fraction 1.5": (["--val-fraction", "1.5"], ("--val-fraction", "[0, 1)")),
    "split train": (["--split", "train"], ("--split", "'train'")),
    "seed abc": (["--seed", "abc"], ("--seed", "'abc'")),
    "unknown dataset": (["--dataset", "imagenet"], ("imagenet", "known names")),
    "dataset without its files": (["--dataset", "cifar10"], ("cifar10", "--data")),
    "data path missing": (["--data", "/nonexistent/data"], ("/nonexistent/data",)),
}


@pytest.mark.parametrize("case", list(EVAL_OPTIONS))
def test_eval_refuses(case: str, digits_run: Path, tmp_path: Path, cct) -> None:
    options, needles = EVAL_OPTIONS[case]
    outcome = cct("eval", digits_run, *options, "--output", tmp_path / "eval")
    outcome.error_line("eval", *needles)
    assert not (tmp_path / "eval").exists()


PREDICT_OPTIONS: dict[str, tuple[list[str], tuple[str, ...]]] = {
    "top-k 0": (["IMAGE", "--top-k", "0"], ("--top-k", ">= 1")),
    "top-k -1": (["IMAGE", "--top-k", "-1"], ("--top-k", ">= 1")),
    "top-k two": (["IMAGE", "--top-k", "two"], ("--top-k", "'two'")),
    "batch size 0": (["IMAGE", "--batch-size", "0"], ("--batch-size", ">= 1")),
    "device tpu": (["IMAGE", "--device", "tpu"], ("'tpu'",)),
    "device cuda": (["IMAGE", "--device", "cuda"], ("cuda", "--device cpu")),
    "no inputs": ([], ("image files",)),
    "a missing input": (["IMAGE", "/nonexistent/cat.png"], ("/nonexistent/cat.png",)),
    "texts for an image model": (["--file", "FILE"], ("--file", "image model")),
    "an empty folder": (["EMPTY"], ("no images found",)),
}


@pytest.mark.parametrize("case", list(PREDICT_OPTIONS))
def test_predict_refuses(case: str, rgb_model: Path, tmp_path: Path, cct, make) -> None:
    options, needles = PREDICT_OPTIONS[case]
    (tmp_path / "empty").mkdir()
    (tmp_path / "texts.txt").write_text("a text\n")
    [image] = make.images(tmp_path / "images", 1)
    names = {"IMAGE": str(image), "FILE": str(tmp_path / "texts.txt"), "EMPTY": str(tmp_path / "empty")}
    outcome = cct("predict", rgb_model, *(names.get(option, option) for option in options))
    outcome.error_line("predict", *needles)
    assert outcome.out == ""


def test_predict_top_k_beyond_the_classes_gives_them_all(rgb_model: Path, tmp_path: Path, cct, make) -> None:
    [image] = make.images(tmp_path, 1)
    outcome = cct("predict", rgb_model, image, "--top-k", "50", "--json")
    assert len(json.loads(outcome.succeeded())["predictions"]) == 3


# ------------------------------------------------------------------------------------ other commands


@pytest.mark.parametrize("argv, needles", [
    (["info", "cct_2_3x2_3"], ("cct_2_3x2_3", "cct_2_3x2_32")),
    (["info", "--pattern", "resnet*"], ("resnet*", "no model")),
    (["export", "cct_2_3x2_32", "out.onnx", "--format", "tflite"], ("--format", "'tflite'")),
    (["convert", "x.pth", "--output", "out"], ("--model",)),
    (["convert", "x.pth", "--model", "cct_2_3x2_32", "--output", "out", "--num-classes", "-1"], ("num_classes",)),
    (["fit"], ("'fit'", "train")),
], ids=["info typo", "info pattern without match", "export format", "convert without model", "convert -1 classes",
        "unknown command"])  # fmt: skip
def test_other_commands_refuse(argv: list[str], needles: tuple[str, ...], tmp_path: Path, cct, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    if argv[0] == "convert":
        from compact_transformers.models import create_model
        from compact_transformers.models.weights import save_model

        save_model(create_model("cct_2_3x2_32"), tmp_path / "x.safetensors")
        (tmp_path / "x.safetensors").rename(tmp_path / "x.pth")
    outcome = cct(*argv)
    command = argv[0] if argv[0] in ("info", "export", "convert") else ""
    line = outcome.error_line(command, *needles) if command else _top_level_error(outcome, needles)
    assert line and not (tmp_path / "out").exists() and not (tmp_path / "out.onnx").exists()


def _top_level_error(outcome, needles: tuple[str, ...]) -> str:
    assert outcome.code == 2 and "Traceback" not in outcome.err
    [line] = outcome.err.strip().splitlines()
    assert line.startswith("cct: error: ") and all(needle in line for needle in needles), line
    return line


def test_bad_option_as_a_process(tmp_path: Path, process) -> None:
    outcome = process("train", "--lr", "0", "--output", tmp_path)
    outcome.error_line("train", "lr must be > 0")
    assert list(tmp_path.iterdir()) == []
