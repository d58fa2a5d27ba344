"""Heat maps and coloured words: `explain.py` and `cct predict --explain DIR`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from compact_transformers.augment import tta_logits
from compact_transformers.cli import main
from compact_transformers.data.text import Vocabulary
from compact_transformers.explain import (
    colourise,
    display_size,
    explain_image,
    heat_map,
    overlay,
    tta_logits_and_weights,
)
from compact_transformers.models import create_model
from compact_transformers.models.weights import save_model


def test_mirror_tta_averages_the_map_mirrored_back() -> None:
    model = create_model("cct_2_3x2_32", num_classes=3, img_size=(16, 24)).eval()
    images = torch.randn(2, 3, 16, 24)
    with torch.no_grad():
        logits, weights = tta_logits_and_weights(model, images, flip_tta=True)
        plain_logits, plain = model.forward_with_token_weights(images)
        _, mirrored = model.forward_with_token_weights(images.flip(-1))
    torch.testing.assert_close(weights, (plain + mirrored.flip(-1)) / 2)
    torch.testing.assert_close(logits, (plain_logits + model(images.flip(-1))) / 2)
    torch.testing.assert_close(weights.sum(dim=(1, 2)), torch.ones(2))


def test_shifted_views_give_predict_s_logits_and_a_map_summing_to_one() -> None:
    model = create_model("cct_2_3x2_32", num_classes=3, img_size=(16, 16)).eval()
    images = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        logits, weights = tta_logits_and_weights(model, images, flip_tta=True, shift_tta=1)
        torch.testing.assert_close(logits, tta_logits(model, images, True, 1))
        _, plain = tta_logits_and_weights(model, images, flip_tta=True)
    assert weights.shape == plain.shape and not torch.allclose(weights, plain)
    torch.testing.assert_close(weights.sum(dim=(1, 2)), torch.ones(2))


def test_heat_map_is_the_grid_upsampled_to_the_image() -> None:
    grid = torch.tensor([[0.1, 0.0], [0.0, 0.9]])
    up = heat_map(grid, (40, 40))
    assert up.shape == (40, 40) and up.max() == pytest.approx(1.0)
    assert up[30:, 30:].mean() > 0.8 and up[:10, :10].mean() < 0.2  # the heavy token's corner is hot
    assert display_size((28, 28)) == (224, 224) and display_size((30, 40)) == (240, 320)
    assert display_size((300, 400)) == (300, 400)
    colours = colourise(np.array([0.0, 1.0]))
    assert colours[0].sum() < 30 and colours[1].sum() > 600  # dark for no weight, bright for the most
    image = np.zeros((40, 40, 1), dtype=np.uint8)
    blended = overlay(image, grid)
    assert blended.shape == (40, 40, 3) and blended[35, 35].sum() > blended[5, 5].sum()


def test_heat_map_over_a_small_image_enlarged_by_a_fraction(tmp_path: Path) -> None:
    """A 26x31 image shown at 240x240 (the model's 24x24 times 10): a crop box computed in floats lands a hair
    outside such an image, which Pillow refuses; the picture must still come out."""
    Image.new("RGB", (31, 26), (200, 30, 30)).save(tmp_path / "small.png")
    picture = explain_image(tmp_path / "small.png", (24, 24), torch.full((3, 3), 1 / 9))
    assert picture.size == (240, 240)
    assert np.asarray(picture)[120, 120, 0] > np.asarray(picture)[120, 120, 2]  # still red under the map


def write_images(folder: Path, colours: list[tuple[int, int, int]]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, colour in enumerate(colours):
        pixels = np.full((20 + 5 * i, 30, 3), colour, dtype=np.uint8)
        pixels[::3, ::4] = 255 - pixels[::3, ::4]
        paths.append(folder / f"img{i}.png")
        Image.fromarray(pixels).save(paths[-1])
    return paths


def test_predict_explain_writes_a_heat_map_per_image(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    model = create_model("cct_2_3x2_32", num_classes=3, img_size=(16, 16), extra={"classes": ["a", "b", "c"]})
    save_model(model, tmp_path / "model")
    images = write_images(tmp_path / "images", [(200, 20, 20), (20, 200, 20)])
    write_images(tmp_path / "images" / "nested", [(20, 20, 200)])  # img0.png again: a name of its own
    assert main(["predict", str(tmp_path / "model"), str(tmp_path / "images"), "--json", "--top-k", "2"]) == 0
    plain = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    out = tmp_path / "explained"
    assert main(["predict", str(tmp_path / "model"), str(tmp_path / "images"), "--json", "--top-k", "2",
                 "--explain", str(out)]) == 0  # fmt: skip
    explained = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert explained == plain  # --explain changes nothing that is printed
    report = json.loads((out / "explanations.json").read_text())["explanations"]
    assert [r["file"] for r in report] == [r["file"] for r in plain]
    assert sorted(r["heat_map"] for r in report) == ["img0-2.png", "img0.png", "img1.png"]
    for record, printed in zip(report, plain):
        assert record["predictions"] == printed["predictions"]
        grid = np.array(record["token_weights"])
        assert grid.shape == model.grid_size and grid.sum() == pytest.approx(1.0, abs=1e-4)
        with Image.open(out / record["heat_map"]) as picture:
            assert picture.width == 224 and picture.height > 224  # the image, then the top-k under it
    assert images[0].exists()


def test_predict_explain_colours_the_words_of_texts(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    vocab = Vocabulary(["<unk>", "<pad>", "good", "bad", "film"])
    model = create_model("text_cct_2_2x1", vocab_size=len(vocab), word_dim=8, seq_len=6, num_classes=2,
                         extra={"vocab": vocab.to_dict(), "classes": ["neg", "pos"]})
    save_model(model, tmp_path / "text")
    texts = ["good film", "a bad, bad <b>film</b> that lasts too long"]
    assert main(["predict", str(tmp_path / "text"), *texts, "--json"]) == 0
    plain = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert main(["predict", str(tmp_path / "text"), *texts, "--json", "--explain", str(tmp_path / "out")]) == 0
    explained = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["predictions"][0]["label"] for r in explained] == [r["predictions"][0]["label"] for r in plain]
    for record, other in zip(explained, plain):
        for ours, theirs in zip(record["predictions"], other["predictions"]):
            assert ours["probability"] == pytest.approx(theirs["probability"], abs=1e-4)
    page = (tmp_path / "out" / "texts.html").read_text()
    # "a bad , bad < b > film < / b > that lasts too long": 16 tokens, of which the model reads seq_len = 6
    assert page.count('class="cct-word"') == 2 + 6 and page.count('class="cct-unread"') == 16 - 6
    assert "&lt;b&gt;" in page and "<b>film" not in page  # the text is escaped
    report = json.loads((tmp_path / "out" / "explanations.json").read_text())["explanations"]
    assert report[0]["tokens"] == ["good", "film"]
    assert sum(report[0]["word_weights"]) == pytest.approx(1.0, abs=1e-4)


def test_predict_explain_refuses_an_onnx_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["predict", str(tmp_path / "model.onnx"), "x.png", "--explain", str(tmp_path / "out")]) == 2
    assert "--explain needs the PyTorch model" in capsys.readouterr().err


def test_the_views_of_one_image_explain_in_one_pass_as_view_by_view(monkeypatch: pytest.MonkeyPatch) -> None:
    """`cct demo` / `cct predict --explain` on one image: its six views run as one batch of 6 (as tta_logits
    runs them), with the logits and map that running them one by one gives."""
    from compact_transformers import augment

    model = create_model("cct_2_3x2_32", num_classes=3, img_size=(16, 16)).eval()
    images = torch.randn(1, 3, 16, 16)
    batch_sizes = []
    forward = model.forward_with_token_weights
    monkeypatch.setattr(model, "forward_with_token_weights", lambda x: batch_sizes.append(len(x)) or forward(x))
    with torch.no_grad():
        stacked = tta_logits_and_weights(model, images, flip_tta=True, shift_tta=1)
        assert batch_sizes == [6]
        monkeypatch.setattr(augment, "STACK_VIEWS_UP_TO", 0)
        one_by_one = tta_logits_and_weights(model, images, flip_tta=True, shift_tta=1)
    assert batch_sizes == [6, 1, 1, 1, 1, 1, 1]
    torch.testing.assert_close(stacked, one_by_one)
