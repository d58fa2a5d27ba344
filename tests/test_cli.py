"""The `cct` command, called in-process through `cli.main` (and once as the installed console script)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from compact_transformers.cli import main
from compact_transformers.models import create_model, load_model
from compact_transformers.models.weights import save_model
from compact_transformers.training.state import load_state

REFERENCE_CONFIGS = Path(__file__).resolve().parents[1].parent / "shared" / "reference-configs"
TINY = ["--samples-per-class", "5", "--epochs", "1", "--batch-size", "16", "--quiet", "--device", "cpu"]


def cct_script() -> list[str]:
    script = Path(sys.executable).parent / "cct"
    return [str(script)] if script.exists() else [sys.executable, "-m", "compact_transformers.cli"]


def error_line(capsys: pytest.CaptureFixture) -> str:
    """The command's stderr, which must be exactly one `cct ...: error: ...` line."""
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("cct ") and ": error: " in lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1-epoch `cct train` run with the default (digits) settings, shrunk; seed 3 (not eval's fallback 0)."""
    output = tmp_path_factory.mktemp("runs")
    assert main(["train", *TINY, "--seed", "3", "--output", str(output), "--name", "run"]) == 0
    return output / "run"


def write_images(folder: Path, sizes: list[tuple[int, int]], mode: str = "RGB", seed: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (height, width) in enumerate(sizes):
        shape = (height, width, 3) if mode == "RGB" else (height, width)
        path = folder / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, size=shape, dtype=np.uint8), mode=mode).save(path)
        paths.append(path)
    return paths


# --------------------------------------------------------------------------------------------- train


def test_train_writes_a_complete_run_directory(run_dir: Path) -> None:
    for name in ("config.yaml", "metrics.jsonl", "checkpoints/last", "checkpoints/best", "final.json", "model"):
        assert (run_dir / name).exists(), name
    pytest.importorskip("matplotlib")
    assert (run_dir / "curves.png").stat().st_size > 0
    # the default recipe for the bundled data is "digits"
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert (config["model"], config["img_size"], config["lr"], config["aa"]) == ("cct_2_3x2_32", 16, 1e-3, None)
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 1


def test_train_missing_data_path_exits_2_naming_it(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["train", "--data", "/nonexistent", "--output", str(tmp_path)]) == 2
    assert "/nonexistent" in error_line(capsys)
    assert list(tmp_path.iterdir()) == []  # no run directory for a run that never started


def test_train_unknown_model_exits_2_with_suggestions(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["train", "--model", "cct_2_3x2_3", *TINY, "--output", str(tmp_path)]) == 2
    line = error_line(capsys)
    assert "cct_2_3x2_3" in line and "did you mean" in line and "cct_2_3x2_32" in line
    assert list(tmp_path.iterdir()) == []


def test_train_unknown_option_value_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["train", "--sched", "foo", "--output", str(tmp_path)]) == 2
    line = error_line(capsys)
    assert "sched" in line and "'foo'" in line and "cosine" in line
    with pytest.raises(SystemExit) as exit_info:  # not a number: argparse refuses it
        main(["train", "--epochs", "many"])
    assert exit_info.value.code == 2
    assert "--epochs" in capsys.readouterr().err


def test_time_limited_train_plans_once_on_data_loaded_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from compact_transformers.training import build, loop

    loads = []
    real = build.load_training_data
    counting = lambda config: loads.append(config) or real(config)  # noqa: E731
    monkeypatch.setattr(build, "load_training_data", counting)
    monkeypatch.setattr(loop, "load_training_data", counting)
    assert main(["train", *TINY, "--time-limit", "5", "--output", str(tmp_path), "--name", "timed"]) == 0
    assert len(loads) == 1  # the probe and the run share the data
    saved = yaml.safe_load((tmp_path / "timed" / "config.yaml").read_text())
    assert saved["time_limit"] == 5.0 and saved["eval_interval"] >= 1
    assert json.loads((tmp_path / "timed" / "final.json").read_text())["epochs"] >= 1


def test_resume_refuses_to_change_the_recipe(run_dir: Path, capsys: pytest.CaptureFixture) -> None:
    before = (run_dir / "checkpoints" / "last" / "state.pt").read_bytes()
    assert main(["train", "--resume", str(run_dir), "--lr", "0.1"]) == 2
    line = error_line(capsys)
    assert "cannot change" in line and "'lr'" in line
    assert (run_dir / "checkpoints" / "last" / "state.pt").read_bytes() == before


def test_console_script_exit_code(tmp_path: Path) -> None:
    result = subprocess.run([*cct_script(), "train", "--data", "/nonexistent", "--output", str(tmp_path)],
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "/nonexistent" in lines[0], result.stderr


@pytest.mark.slow
def test_console_script_survives_a_closed_pipe() -> None:
    """`cct info ... | head -0`: the reader is gone before anything is written; no traceback."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        result = subprocess.run([*cct_script(), "info", "cct_2_3x2_32"], stdout=write_end, stderr=subprocess.PIPE,
                                text=True, timeout=120)  # fmt: skip
    finally:
        os.close(write_end)
    assert result.returncode == 0
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr


@pytest.mark.skipif(not REFERENCE_CONFIGS.is_dir(), reason="the authors' configs are not in ../shared")
def test_train_with_the_authors_yaml_config(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config_file = REFERENCE_CONFIGS / "pretrained__cct_7-3x1_cifar10_300epochs.yml"
    args = ["train", "--config", str(config_file), "--dataset", "digits", "--model", "cct_2_3x2_32",
            "--img-size", "16", *TINY, "--output", str(tmp_path)]  # fmt: skip
    # the file's warmup/cooldown (10 + 10 epochs) do not fit a 1-epoch run: a clear error, nothing written
    assert main(args) == 2
    assert "warmup_epochs" in error_line(capsys)
    # its CIFAR mean/std (3 channels) do not fit the 1-channel digits: a clear error, nothing written
    short = [*args, "--warmup-epochs", "0", "--cooldown-epochs", "0"]
    assert main([*short, "--name", "rgb"]) == 2
    assert "channel" in error_line(capsys)
    assert not (tmp_path / "rgb").exists()

    assert main([*short, "--mean", "none", "--std", "none", "--name", "yaml"]) == 0
    saved = yaml.safe_load((tmp_path / "yaml" / "config.yaml").read_text())
    # the file's recipe, with the command line on top
    assert saved["aa"] == "rand-m9-mstd0.5-inc1" and saved["mixup"] == 0.8 and saved["cutmix"] == 1.0
    assert saved["weight_decay"] == 0.06 and saved["lr"] == 55e-5 and saved["lr_base_batch"] == 128
    assert saved["model"] == "cct_2_3x2_32" and saved["img_size"] == 16 and saved["epochs"] == 1
    assert (tmp_path / "yaml" / "final.json").exists()


def test_pretrained_run_into_another_image_size(run_dir: Path, tmp_path: Path) -> None:
    assert main(["train", *TINY, "--pretrained", str(run_dir), "--img-size", "24", "--output", str(tmp_path),
                 "--name", "finetune"]) == 0  # fmt: skip
    assert yaml.safe_load((tmp_path / "finetune" / "config.yaml").read_text())["pretrained"] == str(run_dir)
    model = load_model(tmp_path / "finetune" / "model")
    assert model.config.img_size == (24, 24)
    assert model.classifier.positional_emb.shape[1] == 36  # resized from 4x4 to 6x6 tokens


# ---------------------------------------------------------------------------------------------- eval


def test_eval_of_a_run_writes_report_and_confusion(run_dir: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["eval", str(run_dir), "--json"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["dataset"] == "digits" and report["split"] == "val"  # digits has no test split
    assert report["count"] == 359
    assert np.array(report["confusion"]).sum() == 359
    assert report["classes"] == [str(d) for d in range(10)]
    # the same numbers as the run's own final evaluation (same split of seed 3, resize and precision)
    final = json.loads((run_dir / "final.json").read_text())["val"]
    assert report["top1"] == pytest.approx(final["top1"]) and report["loss"] == pytest.approx(final["loss"])
    saved = json.loads((run_dir / "eval" / "eval_digits_val.json").read_text())
    assert saved["top1"] == report["top1"]
    pytest.importorskip("matplotlib")
    assert (run_dir / "eval" / "confusion_digits_val.png").stat().st_size > 0


def test_flip_tta_run_is_evaluated_with_it_unless_switched_off(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    args = ["train", *TINY, "--hflip", "0.5", "--flip-tta", "--output", str(tmp_path), "--name", "tta"]
    assert main(args) == 0
    run = tmp_path / "tta"
    assert load_model(run / "model").config.extra["flip_tta"] is True
    capsys.readouterr()
    assert main(["eval", str(run), "--json"]) == 0
    with_tta = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert main(["eval", str(run), "--json", "--no-flip-tta"]) == 0
    without = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert with_tta["flip_tta"] is True and without["flip_tta"] is False
    final = json.loads((run / "final.json").read_text())["val"]
    assert with_tta["loss"] == pytest.approx(final["loss"])  # training validated with the mirror images too
    assert without["loss"] != pytest.approx(final["loss"])


def test_eval_missing_run_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    missing = tmp_path / "no_such_run"
    assert main(["eval", str(missing)]) == 2
    assert str(missing) in error_line(capsys)
    assert main(["eval", "no_such_model"]) == 2  # not a path: read as a preset name
    assert "no_such_model" in error_line(capsys)


# ------------------------------------------------------------------------------------------- predict


@pytest.fixture()
def labelled_model(tmp_path: Path) -> Path:
    """An untrained RGB model that knows its class names."""
    model = create_model("cct_2_3x2_32", num_classes=3, img_size=(16, 16), extra={"classes": ["cat", "dog", "owl"]})
    save_model(model, tmp_path / "model")
    return tmp_path / "model"


def test_predict_writes_one_json_line_per_image(labelled_model: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture) -> None:
    folder = tmp_path / "images"
    images = write_images(folder, [(16, 16), (40, 20), (9, 31)])
    images += write_images(folder / "nested", [(16, 16)], mode="L")
    (folder / "notes.txt").write_text("not an image")
    assert main(["predict", str(labelled_model), str(folder), "--json", "--top-k", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == len(images)
    records = [json.loads(line) for line in lines]
    assert sorted(r["file"] for r in records) == sorted(str(p) for p in images)
    for record in records:
        predictions = record["predictions"]
        assert len(predictions) == 2
        assert all(p["label"] == ["cat", "dog", "owl"][p["index"]] for p in predictions)
        assert 1 >= predictions[0]["probability"] >= predictions[1]["probability"] >= 0


def test_predict_probabilities_of_all_classes_sum_to_one(labelled_model: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    image = write_images(tmp_path / "one", [(16, 16)])[0]
    assert main(["predict", str(labelled_model), str(image), "--json", "--fp32"]) == 0
    predictions = json.loads(capsys.readouterr().out)["predictions"]
    assert {p["label"] for p in predictions} == {"cat", "dog", "owl"}
    assert sum(p["probability"] for p in predictions) == pytest.approx(1.0, abs=1e-5)


def test_predict_skips_unreadable_files_with_a_warning(labelled_model: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    folder = tmp_path / "mixed"
    write_images(folder, [(16, 16)])
    (folder / "broken.png").write_bytes(b"not a png at all")
    assert main(["predict", str(labelled_model), str(folder), "--json"]) == 0
    captured = capsys.readouterr()
    assert len(captured.out.strip().splitlines()) == 1
    assert "broken.png" in captured.err


def test_predict_with_a_run_directory(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    images = write_images(tmp_path / "digits", [(8, 8), (8, 8)], mode="L")
    assert main(["predict", str(run_dir), *map(str, images)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith(str(p)) for line, p in zip(lines, images))


def test_shift_tta_run_is_evaluated_with_it_unless_switched_off(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    args = ["train", *TINY, "--hflip", "0.5", "--flip-tta", "--translate", "1", "--shift-tta", "1",
            "--output", str(tmp_path), "--name", "shift"]
    assert main(args) == 0
    run = tmp_path / "shift"
    assert load_model(run / "model").config.extra["shift_tta"] == 1
    capsys.readouterr()
    reports = {}
    for flags in ([], ["--no-shift-tta"], ["--no-shift-tta", "--no-flip-tta"]):
        assert main(["eval", str(run), "--json", *flags]) == 0
        reports[len(flags)] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (reports[0]["flip_tta"], reports[0]["shift_tta"]) == (True, 1)
    assert (reports[1]["flip_tta"], reports[1]["shift_tta"]) == (True, 0)
    assert (reports[2]["flip_tta"], reports[2]["shift_tta"]) == (False, 0)
    final = json.loads((run / "final.json").read_text())["val"]
    assert reports[0]["loss"] == pytest.approx(final["loss"])  # training validated with the same views
    assert len({round(report["loss"], 6) for report in reports.values()}) == 3


def test_predict_averages_shifted_mirror_images_for_a_shift_tta_model(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture) -> None:
    torch.manual_seed(0)
    model = create_model("cct_2_3x2_32", num_classes=3, img_size=(16, 16), extra={"flip_tta": True, "shift_tta": 1})
    save_model(model, tmp_path / "model")
    [image] = write_images(tmp_path / "images", [(16, 16)])
    assert main(["predict", str(tmp_path / "model"), str(image), "--json", "--fp32", "--top-k", "3"]) == 0
    preds = json.loads(capsys.readouterr().out.strip())["predictions"]
    got = torch.tensor([p["probability"] for p in sorted(preds, key=lambda p: p["index"])])
    pixels = torch.from_numpy(np.array(Image.open(image))).permute(2, 0, 1)[None].float() / 255
    mean, std = torch.tensor(model.config.mean)[:, None, None], torch.tensor(model.config.std)[:, None, None]
    x = (pixels - mean) / std
    model.eval()
    with torch.no_grad():
        logits = 0
        for view in (x, x.flip(-1)):
            padded = torch.nn.functional.pad(view, (1, 1, 1, 1), mode="reflect")
            logits = logits + model(view) / 4 + (model(padded[..., :16, :16]) + model(padded[..., 2:, 2:])) / 8
    assert torch.allclose(got, logits.softmax(dim=1)[0], atol=1e-4)


def test_predict_averages_mirror_images_for_a_flip_tta_model(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    torch.manual_seed(0)
    model = create_model("cct_2_3x2_32", num_classes=3, img_size=(16, 16), extra={"flip_tta": True})
    save_model(model, tmp_path / "model")
    [image] = write_images(tmp_path / "images", [(16, 16)])
    probabilities = {}
    for flag in ([], ["--no-flip-tta"]):
        assert main(["predict", str(tmp_path / "model"), str(image), "--json", "--fp32", "--top-k", "3", *flag]) == 0
        [line] = capsys.readouterr().out.strip().splitlines()
        preds = json.loads(line)["predictions"]
        probabilities[bool(flag)] = torch.tensor([p["probability"] for p in sorted(preds, key=lambda p: p["index"])])
    pixels = torch.from_numpy(np.array(Image.open(image))).permute(2, 0, 1)[None].float() / 255
    mean, std = torch.tensor(model.config.mean)[:, None, None], torch.tensor(model.config.std)[:, None, None]
    x = (pixels - mean) / std
    model.eval()
    with torch.no_grad():
        expected_tta = ((model(x) + model(x.flip(-1))) / 2).softmax(dim=1)[0]
        expected_plain = model(x).softmax(dim=1)[0]
    assert torch.allclose(probabilities[False], expected_tta, atol=1e-4)
    assert torch.allclose(probabilities[True], expected_plain, atol=1e-4)
    assert not torch.allclose(expected_tta, expected_plain, atol=1e-4)


def test_predict_errors(labelled_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "empty").mkdir()
    assert main(["predict", str(labelled_model), str(tmp_path / "empty")]) == 2
    assert "no images found" in error_line(capsys)
    assert main(["predict", str(labelled_model), str(tmp_path / "missing.png")]) == 2
    assert "missing.png" in error_line(capsys)


# ---------------------------------------------------------------------------------------------- info


def test_info_json_gives_the_parameter_count(capsys: pytest.CaptureFixture) -> None:
    assert main(["info", "cct_2_3x2_32", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["name"] == "cct_2_3x2_32" and row["params"] == 283723
    assert row["img_size"] == [32, 32] and row["num_classes"] == 10 and row["family"] == "cct"


def test_info_table_prints_a_row_per_model(capsys: pytest.CaptureFixture) -> None:
    assert main(["info", "cct_2_3x2_32", "cvt_7_4_32"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split()[:4] == ["model", "family", "PE", "params"]
    assert set(lines[1]) == {"-"}
    assert len(lines) == 4
    assert lines[2].split()[:4] == ["cct_2_3x2_32", "cct", "learnable", "283,723"]
    assert lines[3].split()[:2] == ["cvt_7_4_32", "cvt"]


def test_info_unknown_model_exits_2(capsys: pytest.CaptureFixture) -> None:
    assert main(["info", "cct_2_3x2_3"]) == 2
    assert "cct_2_3x2_32" in error_line(capsys)


@pytest.mark.slow
def test_info_default_table(capsys: pytest.CaptureFixture) -> None:
    assert main(["info"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    names = [line.split()[0] for line in lines[2:]]
    assert len(names) >= 10 and "cct_7_3x1_32" in names and len(set(names)) == len(names)


def test_no_command_prints_help(capsys: pytest.CaptureFixture) -> None:
    assert main([]) == 0
    assert "train" in capsys.readouterr().out


def test_checkpoint_state_of_the_cli_run(run_dir: Path) -> None:
    state = load_state(run_dir / "checkpoints" / "last")
    assert state["epoch"] == 1 and state["world_size"] == 1
    assert torch.is_tensor(state["rng"][0]["torch"])  # one RNG state per process


# ---------------------------------------------------------------------------------------------- errors


def test_user_errors_are_one_line_and_bugs_keep_their_traceback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture) -> None:
    from compact_transformers import cli

    # the library's own errors: one line, exit 2
    assert main(["train", *TINY, "--device", "tpu", "--output", str(tmp_path)]) == 2
    assert "unknown device 'tpu'" in error_line(capsys)
    bad_yaml = tmp_path / "bad.yml"
    bad_yaml.write_text("epochs: 3\n  lr: 2\n")
    assert main(["train", "--config", str(bad_yaml), "--output", str(tmp_path)]) == 2
    assert f"{bad_yaml}:2:" in error_line(capsys)
    # an OS error about a file the user named: one line
    monkeypatch.setattr(cli, "cmd_info", lambda args: open(tmp_path / "absent" / "file"))
    assert main(["info"]) == 2
    assert "No such file or directory" in error_line(capsys)
    # anything else is a bug: the traceback is kept, not turned into a "user error"
    def buggy(args):
        raise ValueError("an internal inconsistency")

    monkeypatch.setattr(cli, "cmd_info", buggy)
    with pytest.raises(ValueError, match="internal inconsistency"):
        main(["info"])


@pytest.mark.parametrize("name", ["../../escape", "a/b", "..", "."])
def test_run_name_must_stay_inside_output(name: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    output = tmp_path / "deep" / "runs"
    assert main(["train", *TINY, "--output", str(output), "--name", name]) == 2
    assert "a run name must be a single folder name" in error_line(capsys)
    assert not any(tmp_path.rglob("config.yaml"))
