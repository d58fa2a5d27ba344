"""ONNX for deployment: the export is checked against onnxruntime, carries the preprocessing and labels in its
metadata, and `cct predict model.onnx` answers as the PyTorch model does, for images and for texts."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import compact_transformers
from compact_transformers.cli import main
from compact_transformers.data.text import Vocabulary
from compact_transformers.errors import CheckpointError, ConfigError, ExportError
from compact_transformers.integrations import export as export_module
from compact_transformers.integrations.export import (
    OnnxClassifier,
    OnnxConfig,
    export_model,
    load_onnx,
    verify_onnx,
)
from compact_transformers.models import create_model, save_model

ort = pytest.importorskip("onnxruntime", reason="needs the [export] extra")
onnx = pytest.importorskip("onnx", reason="needs the [export] extra")
pytest.importorskip("onnxscript", reason="needs the [export] extra")

CLASSES = ["ant", "bee", "cat", "dog", "eel"]
TEXT_CLASSES = ["sports", "science", "world"]
TEXTS = ["the match was won in the last minute", "new telescope sees distant stars", "leaders meet for talks",
         "stars", ""]  # fmt: skip

# (preset, overrides): random weights; the second has 37 classes, one channel and a non-default resize
IMAGE_CASES = {
    "cct_2_3x2_32": ("cct_2_3x2_32", {}),
    "vit_gray_28_c37": ("vit_2_4_32", dict(in_chans=1, img_size=28, num_classes=37, mean=(0.5,), std=(0.25,),
                                           extra={"interpolation": "bilinear", "flip_tta": True, "shift_tta": 1,
                                                  "classes": [f"c{i}" for i in range(37)]})),
    "cvt_2_4_32": ("cvt_2_4_32", {}),
    "cct_gray_28": ("cct_2_3x2_32", dict(in_chans=1, img_size=28)),
}  # fmt: skip
FAST_CASES = ("cct_2_3x2_32", "vit_gray_28_c37")
_EXPORTED: dict[str, tuple[torch.nn.Module, Path]] = {}


def _exported(case: str, folder: Path) -> tuple[torch.nn.Module, Path]:
    """A random-weight model and its verified ONNX export, built once per case."""
    if case not in _EXPORTED:
        torch.manual_seed(0)
        if case == "text":
            model = _text_model()
        else:
            name, overrides = IMAGE_CASES[case]
            model = create_model(name, **overrides)
        _EXPORTED[case] = (model.eval(), export_model(model, folder / f"{case}.onnx", name=case))
    return _EXPORTED[case]


def _text_model() -> torch.nn.Module:
    vocab = Vocabulary.build(TEXTS[:3])
    return create_model("text_cct_2_1x1", vocab_size=len(vocab), word_dim=16, seq_len=12, num_classes=3,
                        extra={"vocab": vocab.to_dict(), "classes": TEXT_CLASSES})  # fmt: skip


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("onnx")


def _metadata(path: Path) -> dict[str, str]:
    return {prop.key: prop.value for prop in onnx.load(str(path)).metadata_props}


def _session(path: Path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


# ---------------------------------------------------------------------------------------------- parity


@pytest.mark.parametrize(
    "case", [c if c in FAST_CASES else pytest.param(c, marks=pytest.mark.slow) for c in IMAGE_CASES]
)
def test_image_model_onnxruntime_equals_eager_at_batch_1_and_7(case: str, folder: Path) -> None:
    model, path = _exported(case, folder)
    session = _session(path)
    (images_input,) = session.get_inputs()
    assert images_input.name == "images" and images_input.type == "tensor(float)"
    assert not isinstance(images_input.shape[0], int), "the batch dimension should be symbolic"
    config = model.config
    for batch in (1, 7):
        images = torch.randn(batch, config.in_chans, *config.img_size)
        (got,) = session.run(None, {"images": images.numpy()})
        with torch.no_grad():
            expected = model(images)
        assert got.shape == (batch, config.num_classes)
        torch.testing.assert_close(torch.from_numpy(got), expected, atol=1e-4, rtol=0)


def test_text_model_onnxruntime_equals_eager_at_batch_1_and_7(folder: Path) -> None:
    model, path = _exported("text", folder)
    session = _session(path)
    inputs = {item.name: item for item in session.get_inputs()}
    assert inputs["ids"].type == "tensor(int64)" and inputs["mask"].type == "tensor(bool)"
    assert inputs["ids"].shape[1] == model.config.seq_len
    assert not isinstance(inputs["ids"].shape[0], int), "the batch dimension should be symbolic"
    seq_len = model.config.seq_len
    for batch in (1, 7):
        lengths = torch.randint(0, seq_len + 1, (batch,))
        mask = torch.arange(seq_len)[None, :] < lengths[:, None]
        ids = torch.randint(2, model.config.vocab_size, (batch, seq_len)).masked_fill(~mask, 1)
        (got,) = session.run(None, {"ids": ids.numpy(), "mask": mask.numpy()})
        with torch.no_grad():
            expected = model(ids, mask)
        assert got.shape == (batch, 3)
        torch.testing.assert_close(torch.from_numpy(got), expected, atol=1e-4, rtol=0)


def test_onnx_classifier_pads_short_texts_to_the_exported_length(folder: Path) -> None:
    """Batches cut to their longest text (as `cct predict` makes them) are padded back to seq_len."""
    model, path = _exported("text", folder)
    ids = torch.tensor([[2, 3, 4, 5], [6, 7, 1, 1]])
    mask = ids != 1
    with torch.no_grad():
        expected = model(ids, mask)
    torch.testing.assert_close(load_onnx(path)(ids, mask), expected, atol=1e-4, rtol=0)


def test_text_model_exports_as_a_torch_export_program(tmp_path: Path) -> None:
    model = _text_model().eval()
    path = export_model(model, tmp_path / "text.pt2", fmt="pt2")
    program = torch.export.load(str(path)).module()
    ids = torch.randint(2, model.config.vocab_size, (5, model.config.seq_len))
    mask = torch.arange(model.config.seq_len)[None, :] < torch.tensor([12, 1, 5, 7, 3])[:, None]
    with torch.no_grad():
        torch.testing.assert_close(program(ids, mask), model(ids, mask), atol=1e-5, rtol=0)
    assert [p.name for p in tmp_path.iterdir()] == ["text.pt2"]


# -------------------------------------------------------------------------------------------- metadata


def test_image_metadata_reads_back_with_onnx(folder: Path) -> None:
    model, path = _exported("vit_gray_28_c37", folder)
    metadata = _metadata(path)
    assert metadata["model"] == "vit_gray_28_c37"
    assert metadata["task"] == "image-classification"
    assert metadata["compact_transformers_version"] == compact_transformers.__version__
    assert json.loads(metadata["img_size"]) == [28, 28]
    assert int(metadata["in_chans"]) == 1
    assert json.loads(metadata["mean"]) == [0.5] and json.loads(metadata["std"]) == [0.25]
    assert metadata["interpolation"] == "bilinear"
    assert json.loads(metadata["flip_tta"]) is True and json.loads(metadata["shift_tta"]) == 1
    assert load_onnx(path).config.extra["shift_tta"] == 1
    assert int(metadata["num_classes"]) == 37
    assert json.loads(metadata["classes"]) == model.config.extra["classes"]
    assert "vocab" not in metadata


def test_image_metadata_defaults_for_a_model_without_training_records(folder: Path) -> None:
    """No classes, interpolation or flip_tta in config.extra: what `cct predict` assumes for such a model."""
    model, path = _exported("cct_2_3x2_32", folder)
    metadata = _metadata(path)
    assert metadata["interpolation"] == "bicubic"
    assert json.loads(metadata["flip_tta"]) is False and json.loads(metadata["shift_tta"]) == 0
    assert json.loads(metadata["classes"]) == [str(i) for i in range(10)]
    assert json.loads(metadata["mean"]) == pytest.approx(list(model.config.mean))
    config = load_onnx(path).config
    assert (config.img_size, config.in_chans, config.num_classes) == ((32, 32), 3, 10)
    del metadata["shift_tta"]  # as in a file exported before shifted views existed
    assert OnnxConfig.from_metadata(metadata).extra["shift_tta"] == 0


def test_text_metadata_reads_back_with_onnx(folder: Path) -> None:
    model, path = _exported("text", folder)
    metadata = _metadata(path)
    assert metadata["task"] == "text-classification"
    assert json.loads(metadata["vocab"]) == model.config.extra["vocab"]
    assert metadata["tokenizer"] == "words-v1"
    assert int(metadata["seq_len"]) == 12
    assert json.loads(metadata["padding_idx"]) == 1
    assert json.loads(metadata["classes"]) == TEXT_CLASSES
    assert int(metadata["num_classes"]) == 3
    assert "img_size" not in metadata and "mean" not in metadata


def test_a_foreign_onnx_file_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "plain.onnx"
    torch.onnx.export(torch.nn.Linear(3, 2).eval(), (torch.randn(1, 3),), str(path), dynamo=True, verbose=False)
    with pytest.raises(CheckpointError, match="metadata"):
        load_onnx(path)


# ------------------------------------------------------------------------------------------ verification


def test_verification_tolerance_is_relative_to_the_logit_scale(folder: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    model, path = _exported("cct_2_3x2_32", folder)
    original = OnnxClassifier.forward
    for offset, passes in ((5e-4, True), (2e-3, False)):
        monkeypatch.setattr(OnnxClassifier, "forward", lambda self, x, mask=None: original(self, x, mask) + offset)
        if passes:
            assert verify_onnx(model, path, tolerance=1e-3) == pytest.approx(offset, rel=1e-2)
        else:
            with pytest.raises(ExportError, match="max |diff|"):
                verify_onnx(model, path, tolerance=1e-3)


def test_failed_verification_is_one_error_line_and_leaves_no_file(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    save_model(_text_model(), tmp_path / "model")
    original = OnnxClassifier.forward
    monkeypatch.setattr(OnnxClassifier, "forward", lambda self, x, mask=None: original(self, x, mask) * 1.5 + 0.1)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    assert main(["export", str(tmp_path / "model"), "--output", str(out_dir / "model.onnx")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cct export: error: ") and "max |diff|" in lines[0], lines
    assert list(out_dir.iterdir()) == []


def test_no_verify_skips_onnxruntime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    save_model(_text_model(), tmp_path / "model")

    def refuse(*args: object, **kwargs: object) -> float:
        raise AssertionError("verify_onnx ran despite --no-verify")

    monkeypatch.setattr(export_module, "verify_onnx", refuse)
    output = tmp_path / "model.onnx"
    assert main(["export", str(tmp_path / "model"), "--output", str(output), "--no-verify"]) == 0
    assert _metadata(output)["task"] == "text-classification"
    with pytest.raises(AssertionError, match="despite"):  # and without the flag it does run
        main(["export", str(tmp_path / "model"), "--output", str(tmp_path / "other.onnx")])
    assert not (tmp_path / "other.onnx").exists()


def test_missing_onnxruntime_names_the_export_extra(folder: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture) -> None:
    model, path = _exported("cct_2_3x2_32", folder)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` raises ImportError
    with pytest.raises(ConfigError, match=r"compact-transformers\[export\]"):
        export_model(model, folder / "never.onnx")
    assert not (folder / "never.onnx").exists()
    assert main(["predict", str(path), "whatever.png"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "onnxruntime" in lines[0] and "compact-transformers[export]" in lines[0], lines


# --------------------------------------------------------------------------------------------- predict


def _write_images(folder: Path) -> list[Path]:
    """Coloured stripes of several sizes, directions and frequencies (noise images all look alike to a random
    model), and a grey one."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    sizes = [(24, 24), (45, 60), (20, 17), (32, 40), (24, 30), (50, 24)]
    for i, (height, width) in enumerate(sizes):
        rows, cols = np.mgrid[0:height, 0:width]
        stripes = 0.5 + 0.5 * np.sin(rng.uniform(0.1, 1.0) * (cols + i * rows))
        pixels = (rng.integers(0, 256, size=3)[None, None, :] * stripes[..., None]).astype(np.uint8)
        image = Image.fromarray(pixels, mode="RGB")
        paths.append(folder / f"img{i}.png")
        (image.convert("L") if i == 3 else image).save(paths[-1])
    return paths


def _predictions(argv: list[str], capsys: pytest.CaptureFixture) -> list[dict]:
    assert main(["predict", *argv, "--json", "--top-k", "5"]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]


def _assert_same_predictions(onnx_records: list[dict], eager_records: list[dict]) -> None:
    assert len(onnx_records) == len(eager_records) > 0
    for got, expected in zip(onnx_records, eager_records):
        assert {k: v for k, v in got.items() if k != "predictions"} == {
            k: v for k, v in expected.items() if k != "predictions"}
        assert got["predictions"][0]["label"] == expected["predictions"][0]["label"]
        got_probs = {p["label"]: p["probability"] for p in got["predictions"]}
        expected_probs = {p["label"]: p["probability"] for p in expected["predictions"]}
        assert got_probs.keys() == expected_probs.keys()
        for label, probability in expected_probs.items():
            assert got_probs[label] == pytest.approx(probability, abs=1e-4)


def test_cct_predict_on_onnx_equals_the_eager_model(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    """Through the CLI: export a saved model, then predict PNGs of other sizes (resized and normalised from
    the metadata alone), with the flip TTA and the bilinear resize the model was validated with."""
    torch.manual_seed(0)
    model = create_model("cct_2_3x2_32", num_classes=5, img_size=24,
                         extra={"classes": CLASSES, "flip_tta": True, "interpolation": "bilinear"})  # fmt: skip
    with torch.no_grad():
        model.classifier.fc.weight.mul_(40)  # confident, varied predictions: a wrong pipeline changes top-1
    save_model(model, tmp_path / "model")
    images = _write_images(tmp_path / "images")
    output = tmp_path / "model.onnx"
    caplog.set_level(logging.INFO, logger="compact_transformers.integrations.export")
    assert main(["export", str(tmp_path / "model"), "--output", str(output)]) == 0
    assert "verified with onnxruntime: max |diff|" in caplog.text and "over batch 7" in caplog.text
    capsys.readouterr()
    eager = _predictions([str(tmp_path / "model"), str(tmp_path / "images"), "--fp32", "--device", "cpu"], capsys)
    onnx_records = _predictions([str(output), str(tmp_path / "images")], capsys)
    assert [r["file"] for r in eager] == sorted(str(p) for p in images)
    assert len({r["predictions"][0]["label"] for r in eager}) > 1, "the test needs images with different top-1"
    _assert_same_predictions(onnx_records, eager)
    # the same with --no-flip-tta, which the metadata's flip_tta yields to as the model's does
    eager = _predictions([str(tmp_path / "model"), str(images[1]), "--fp32", "--no-flip-tta"], capsys)
    _assert_same_predictions(_predictions([str(output), str(images[1]), "--no-flip-tta"], capsys), eager)


def test_cct_predict_on_a_text_onnx_equals_the_eager_model(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    torch.manual_seed(0)
    model = _text_model()
    with torch.no_grad():
        model.classifier.fc.weight.mul_(40)
    save_model(model, tmp_path / "model")
    output = tmp_path / "text.onnx"
    assert main(["export", str(tmp_path / "model"), "--output", str(output)]) == 0
    capsys.readouterr()
    texts = [*TEXTS, "unknown words only", " ".join(TEXTS)]  # an empty text, and one longer than seq_len
    eager = _predictions([str(tmp_path / "model"), *texts, "--fp32", "--device", "cpu"], capsys)
    _assert_same_predictions(_predictions([str(output), *texts], capsys), eager)
    assert [r["text"] for r in eager] == texts
