"""The timm integration: presets in timm's registry, pretrained loading through timm, the script runner, and
`cct train --model timm:NAME` with eval and predict on its run. Runs in .venv-timm (see the Makefile)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

timm = pytest.importorskip("timm", reason="needs the [timm] extra (make test runs it in .venv-timm)")

from PIL import Image  # noqa: E402

from compact_transformers.cli import main  # noqa: E402
from compact_transformers.errors import CheckpointError, ConfigError  # noqa: E402
from compact_transformers.integrations import timm as timm_integration  # noqa: E402
from compact_transformers.models import create_model, list_models, load_model, save_model  # noqa: E402
from compact_transformers.training.build import build_student, load_training_data  # noqa: E402
from compact_transformers.training.recipe import TrainConfig  # noqa: E402

TINY = ["--samples-per-class", "5", "--epochs", "1", "--batch-size", "16", "--quiet", "--device", "cpu", "--no-amp"]


def _logits(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(images)


# ------------------------------------------------------------------------------------ presets in timm


def test_every_vision_preset_is_listed_in_timm() -> None:
    assert sorted(timm.list_models("cct_*")) == list_models("cct_*", kind="vision")
    assert set(list_models(kind="vision")) <= set(timm.list_models())
    assert timm.list_models("text_*") == []
    assert set(list_models(pretrained=True)) <= set(timm.list_models(pretrained=True))
    assert not timm.is_model_pretrained("cct_2_3x2_32")  # no released weights: no URL in its cfg


def test_a_name_timm_already_has_is_not_overwritten(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(timm_integration, "list_models", lambda kind: ["resnet18", "cct_2_3x2_32"])
    with pytest.warns(UserWarning, match="resnet18"):
        assert timm_integration.register_models() == []  # resnet18 is timm's, cct_2_3x2_32 registered already
    assert timm.models.model_entrypoint("resnet18").__module__.startswith("timm.")
    assert type(timm.create_model("resnet18", num_classes=3)).__name__ == "ResNet"


@pytest.mark.parametrize(("name", "tokens"), [("cct_7_3x1_32", 16 * 24), ("cvt_2_4_32", 8 * 12), ("vit_2_4_32", 8 * 12)])
def test_create_model_of_each_family(name: str, tokens: int) -> None:
    default = timm.create_model(name)
    cfg = default.pretrained_cfg
    assert (default.num_classes, cfg["num_classes"], cfg["input_size"], cfg["crop_pct"]) == (10, 10, (3, 32, 32), 1.0)
    assert cfg["mean"] == default.config.mean and cfg["interpolation"] == "bicubic"
    own_keys = default.state_dict()
    assert cfg["first_conv"] + ".weight" in own_keys and cfg["classifier"] + ".weight" in own_keys
    assert timm.data.resolve_data_config(model=default)["input_size"] == (3, 32, 32)

    model = timm.create_model(name, num_classes=7, in_chans=1, img_size=(32, 48), drop_path_rate=0.0)
    logits = model(torch.randn(2, 1, 32, 48))
    assert logits.shape == (2, 7) and torch.isfinite(logits).all()
    assert (model.num_classes, model.in_chans, model.config.img_size, model.num_tokens) == (7, 1, (32, 48), tokens)
    assert model.config.drop_path == 0.0 and default.config.drop_path == 0.1  # timm's names for our settings
    assert model.get_classifier().out_features == 7
    model.reset_classifier(4)
    assert model(torch.randn(1, 1, 32, 48)).shape == (1, 4)


@pytest.mark.parametrize("name", ["cct_2_3x2_32", "vit_2_4_32_sine"])
def test_pretrained_file_loads_our_safetensors_and_the_authors_pth(name: str, tmp_path: Path, ref) -> None:
    family, extra = ("cct", dict(kernel_size=3, n_conv_layers=2)) if name.startswith("cct") else ("vit", {})
    positional = "sine" if name.endswith("_sine") else "learnable"
    state = ref.state_dict(family, embed_dim=128, num_layers=2, mlp_ratio=1.0, num_classes=10, num_tokens=64,
                           positional=positional, seed=4, **extra)  # fmt: skip
    authors = tmp_path / "authors.pth"
    torch.save(state, authors)
    ours = save_model(create_model(name, pretrained=authors), tmp_path / "ours.safetensors")
    images = torch.randn(3, 3, 32, 32)
    expected = ref.forward(state, images, family=family, num_heads=2)

    from_pth = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(authors)))
    from_safetensors = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(ours)))
    torch.testing.assert_close(_logits(from_pth, images), expected, atol=1e-5, rtol=0)
    assert torch.equal(_logits(from_safetensors, images), _logits(from_pth, images))


def test_pretrained_file_into_another_head_size_and_channel_count(tmp_path: Path) -> None:
    source = create_model("cct_2_3x2_32")
    path = save_model(source, tmp_path / "w.safetensors")
    with pytest.warns(UserWarning, match="head has 10 classes, the model 5"):
        model = timm.create_model("cct_2_3x2_32", pretrained=True, num_classes=5, in_chans=1, img_size=48,
                                  pretrained_cfg_overlay=dict(file=str(path)))  # fmt: skip
    loaded, original = model.state_dict(), source.state_dict()
    assert torch.equal(loaded["classifier.blocks.0.linear1.weight"], original["classifier.blocks.0.linear1.weight"])
    conv = "tokenizer.conv_layers.0.0.weight"  # timm folds the 3 input channels into 1
    torch.testing.assert_close(loaded[conv], original[conv].sum(dim=1, keepdim=True))
    assert loaded["classifier.positional_emb"].shape == (1, 12 * 12, 128)  # resized from 8x8 tokens
    assert model(torch.randn(2, 1, 48, 48)).shape == (2, 5)


def test_pretrained_file_of_another_model_is_a_checkpoint_error(tmp_path: Path) -> None:
    path = save_model(create_model("cct_2_3x2_32"), tmp_path / "w.safetensors")
    with pytest.raises(CheckpointError, match="missing keys.*conv_layers.0.0.bias"):
        timm.create_model("cvt_2_4_32", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))


# ----------------------------------------------------------------------------------- timm's own scripts


def test_runner_runs_a_script_that_knows_the_presets(tmp_path: Path) -> None:
    script = tmp_path / "train.py"
    script.write_text(
        "import argparse, json, sys\n"
        "import timm\n"
        "parser = argparse.ArgumentParser()\n"
        "parser.add_argument('--model')\n"
        "parser.add_argument('--out')\n"
        "args = parser.parse_args()\n"
        "model = timm.create_model(args.model, num_classes=3)\n"
        "logits = model(__import__('torch').randn(1, 3, 32, 32))\n"
        "json.dump({'name': __name__, 'argv0': sys.argv[0], 'shape': list(logits.shape)}, open(args.out, 'w'))\n"
    )
    out = tmp_path / "out.json"
    command = [sys.executable, "-m", "compact_transformers.integrations.timm", str(script), "--model", "cvt_2_4_32",
               "--out", str(out)]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(out.read_text()) == {"name": "__main__", "argv0": str(script), "shape": [1, 3]}


def test_runner_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such script"):
        timm_integration.main([str(tmp_path / "missing.py")])
    assert timm_integration.main([]) == 2


# ------------------------------------------------------------------------- a timm model trained by cct


@pytest.fixture(scope="module")
def timm_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    output = tmp_path_factory.mktemp("runs")
    assert main(["train", "--model", "timm:resnet18", "--dataset", "digits", *TINY, "--output", str(output),
                 "--name", "run"]) == 0  # fmt: skip
    return output / "run"


def test_train_saves_a_timm_model_that_loads_back(timm_run: Path) -> None:
    config = json.loads((timm_run / "model" / "config.json").read_text())
    assert (config["kind"], config["model_name"], config["num_classes"], config["in_chans"]) == ("timm", "resnet18", 10, 1)
    model = load_model(timm_run / "model")
    assert isinstance(model, timm_integration.TimmClassifier)
    assert type(model.model).__name__ == "ResNet" and model.config.img_size == (16, 16)
    assert model(torch.randn(2, 1, 16, 16)).shape == (2, 10)


def test_eval_and_predict_of_a_timm_run(timm_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    capsys.readouterr()
    assert main(["eval", str(timm_run), "--json", "--fp32", "--device", "cpu"]) == 0
    report = json.loads(capsys.readouterr().out)
    final = json.loads((timm_run / "final.json").read_text())
    assert report["count"] == final["val"]["count"] == 359
    assert report["top1"] == pytest.approx(final["val"]["top1"])  # the saved model is the one validated

    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, size=(8, 8), dtype=np.uint8), mode="L").save(tmp_path / f"{i}.png")
    assert main(["predict", str(timm_run), str(tmp_path), "--json", "--top-k", "2", "--device", "cpu"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [Path(line["file"]).name for line in lines] == ["0.png", "1.png", "2.png"]
    for line in lines:
        assert len(line["predictions"]) == 2
        assert {p["label"] for p in line["predictions"]} <= {str(d) for d in range(10)}


def test_timm_student_starts_from_a_run_of_it(timm_run: Path) -> None:
    config = TrainConfig(model="timm:resnet18", samples_per_class=5, pretrained=str(timm_run))
    model = build_student(config, load_training_data(config), (16, 16))
    trained = load_model(timm_run / "model").state_dict()
    assert all(torch.equal(tensor, trained[key]) for key, tensor in model.state_dict().items())


def test_timm_student_refuses_a_positional_embedding_setting() -> None:
    config = TrainConfig(model="timm:resnet18", samples_per_class=5, positional_embedding="none")
    with pytest.raises(ConfigError, match="keeps timm's own positional embedding"):
        build_student(config, load_training_data(config), (16, 16))


def test_unknown_timm_model_exits_2_with_suggestions(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["train", "--model", "timm:resnet18x", *TINY, "--output", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert "unknown timm model 'resnet18x'" in error and "resnet18" in error.split("did you mean", 1)[1]
    assert list(tmp_path.iterdir()) == []


def test_missing_timm_is_a_config_error_naming_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "timm", None)  # `import timm` raises ImportError
    with pytest.raises(ConfigError, match=r"compact-transformers\[timm\]"):
        timm_integration.TimmConfig(model_name="resnet18").build()
