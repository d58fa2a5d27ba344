"""The Hugging Face transformers integration: conversion both ways, Auto classes, pipelines against `cct predict`,
and the tokenizer against data.text.tokenize."""

from __future__ import annotations

import importlib
import json
import sys
import unicodedata
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

pytest.importorskip("transformers", reason="needs the [hf] extra")
pytest.importorskip("tokenizers", reason="needs the [hf] extra")

import transformers  # noqa: E402

from compact_transformers.augment import AugmentConfig, EvalTransform, tta_logits  # noqa: E402
from compact_transformers.cli import main  # noqa: E402
from compact_transformers.data.images import decode_image  # noqa: E402
from compact_transformers.data.text import Vocabulary, encode_texts, tokenize  # noqa: E402
from compact_transformers.errors import CheckpointError, ConfigError  # noqa: E402
from compact_transformers.models import create_model, save_model  # noqa: E402

hf = importlib.import_module("compact_transformers.integrations.transformers")

CLASSES = ["ant", "bee", "cat", "dog", "eel"]
TRICKY = [
    "It's <br />GREAT, isn't it?!", "DON'T", "don\u2019t", "won't've", "he'sn't", "o'clock's", "y'all'd", "n't",
    "'s", "'tis", "rock'n'roll", "rock'", "'quoted'", "a''b", "I'M", "can't", "it's", "3.14 1,000 $5 2-0 10%",
    "  multiple   spaces\t\ttabs\nnewline ", "café naïve ÉCOLE", "cafe\u0301", "straße STRASSE", "x²+½ Ⅻ",
    "snake_case __init__", "emoji 😀👍🏽 ok", "日本語のテキスト", "عربى", "१२३ ٣", "ΟΔΟΣ ΣΟΦΟΣ Σ", "ΑΣ'Σ ΆΣ.", "İstanbul",
    "K\u212a ǅemal ﬁne", "<BR>line<br/>break<Br  />x", "a\u00a0b\u2003c\u3000d", "x\x1cy\x1fz", "e-mail@x.com",
    "<pad> <unk> <s>", "", "   ",
]  # fmt: skip
TEXTS = ["the ant walked", "a bee, a cat and a dog!", "eels don't walk", "it's the cat's", "Σ ΣΟΦΟΣ", *TRICKY]
# Characters whose Unicode properties changed after Python 3.11's Unicode 14 (Oniguruma's tables are newer):
# U+1171E AHOM CONSONANT SIGN MEDIAL RA, a combining mark (case-ignorable) in 14, a spacing mark later.
UNICODE_CHANGED = {0x1171E}


def fp32_predictions(capsys: pytest.CaptureFixture, *args: str) -> list[dict]:
    capsys.readouterr()
    assert main(["predict", *args, "--json", "--fp32", "--device", "cpu", "--top-k", "5"]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]


def vision_model(in_chans: int = 3, flip_tta: bool = True, seed: int = 0, shift_tta: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    stats = {"mean": (0.45,), "std": (0.22,)} if in_chans == 1 else {}
    extra = {"classes": CLASSES, "flip_tta": flip_tta, "shift_tta": shift_tta, "interpolation": "bicubic"}
    return create_model("cct_2_3x2_32", num_classes=5, in_chans=in_chans, extra=extra, **stats).eval()


@pytest.fixture(scope="module")
def text_model() -> torch.nn.Module:
    torch.manual_seed(1)
    vocab = Vocabulary.build(TEXTS)
    return create_model("text_cct_2_1x1", num_classes=3, vocab_size=len(vocab), word_dim=16, seq_len=12,
                        extra={"classes": ["neg", "neu", "pos"], "vocab": vocab.to_dict()}).eval()  # fmt: skip


def write_images(folder: Path, specs: list[tuple[int, int, str]], seed: int = 0) -> list[str]:
    """PNGs of random pixels: (height, width, mode) each."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (height, width, mode) in enumerate(specs):
        shape = (height, width, 3) if mode == "RGB" else (height, width)
        path = folder / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, size=shape, dtype=np.uint8), mode=mode).save(path)
        paths.append(str(path))
    return paths


# ---------------------------------------------------------------------------------------------- vision


@pytest.mark.parametrize("flip_tta", [False, True])
def test_vision_round_trip_keeps_the_logits(flip_tta: bool) -> None:
    model = vision_model(flip_tta=flip_tta)
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    hf_model = hf.to_transformers(model)
    assert isinstance(hf_model, hf.CctForImageClassification) and not hf_model.training
    with torch.no_grad():
        expected = (model(x) + model(x.flip(-1))) / 2 if flip_tta else model(x)
        assert torch.equal(hf_model(pixel_values=x).logits, expected)
        back = hf.from_transformers(hf_model)
        assert torch.equal(back(x), model(x))
    assert back.config == model.config and type(back) is type(model)


def test_vision_model_with_shifted_views_averages_them_as_cct_predict() -> None:
    model = vision_model(flip_tta=True, shift_tta=1)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    hf_model = hf.to_transformers(model)
    assert (hf_model.config.flip_tta, hf_model.config.shift_tta) == (True, 1)
    with torch.no_grad():
        torch.testing.assert_close(hf_model(pixel_values=x).logits, tta_logits(model, x, True, 1))
        assert not torch.allclose(hf_model(pixel_values=x).logits, tta_logits(model, x, True, 0))
        hf_model.config.shift_tta = 0  # switched off, and so saved back into our model
        torch.testing.assert_close(hf_model(pixel_values=x).logits, tta_logits(model, x, True, 0))
    assert hf.from_transformers(hf_model).config.extra["shift_tta"] == 0


def test_exported_directory_loads_with_the_auto_classes(tmp_path: Path) -> None:
    model = vision_model(in_chans=1, flip_tta=False)
    out = hf.export_transformers(model, tmp_path / "hf")
    assert {p.name for p in out.iterdir()} >= {"config.json", "model.safetensors", "preprocessor_config.json"}
    config = transformers.AutoConfig.from_pretrained(out)
    assert isinstance(config, hf.CctConfig) and config.model_type == "compact_transformer"
    assert config.id2label == dict(enumerate(CLASSES)) and config.label2id["eel"] == 4
    processor = transformers.AutoImageProcessor.from_pretrained(out)
    assert isinstance(processor, hf.CctImageProcessor)
    assert processor.size == {"height": 32, "width": 32} and processor.num_channels == 1
    assert processor.image_mean == [0.45] and processor.image_std == [0.22]
    hf_model = transformers.AutoModelForImageClassification.from_pretrained(out).eval()
    assert isinstance(hf_model, hf.CctForImageClassification)
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(hf_model(x).logits, model(x))
        back = hf.from_transformers(out)
        assert torch.equal(back(x), model(x))
    assert back.config == model.config


def test_a_head_for_other_labels_is_initialised_and_the_rest_loaded(tmp_path: Path) -> None:
    model = vision_model()
    out = hf.export_transformers(model, tmp_path / "hf")
    hf_model = transformers.AutoModelForImageClassification.from_pretrained(
        out, id2label={0: "yes", 1: "no"}, label2id={"yes": 0, "no": 1}, ignore_mismatched_sizes=True)
    head = hf_model.cct.classifier.fc.weight
    assert head.shape == (2, 128) and torch.isfinite(head).all() and 0.01 < head.std() < 0.03  # trunc-normal(.02)
    assert torch.equal(hf_model.cct.tokenizer.conv_layers[0][0].weight, model.tokenizer.conv_layers[0][0].weight)
    back = hf.from_transformers(hf_model)
    assert back.config.num_classes == 2 and back.config.extra["classes"] == ["yes", "no"]


def test_loss_is_the_cross_entropy_of_the_labels() -> None:
    hf_model = hf.to_transformers(vision_model()).train()
    x, labels = torch.randn(4, 3, 32, 32), torch.tensor([0, 4, 2, 2])
    output = hf_model(pixel_values=x, labels=labels)
    assert output.loss is not None and output.loss.shape == ()
    assert torch.allclose(output.loss, F.cross_entropy(output.logits, labels))
    output.loss.backward()
    assert hf_model.cct.classifier.fc.weight.grad is not None
    assert hf_model(pixel_values=x).loss is None


def test_processor_prepares_every_kind_of_input_exactly_as_cct_predict(tmp_path: Path) -> None:
    model = vision_model()
    processor = hf.image_processor_for(model)
    config = model.config
    transform = EvalTransform(AugmentConfig(image_size=config.img_size, mean=config.mean, std=config.std,
                                            randaugment=None, interpolation="bicubic"))  # fmt: skip
    [path] = write_images(tmp_path, [(45, 70, "RGB")])
    deep = tmp_path / "16bit.png"  # cct predict rescales 16-bit pixels (Pillow's own conversion clips them)
    Image.fromarray((np.arange(30 * 41).reshape(30, 41) * 50).astype(np.uint16)).save(deep)
    for file in (path, str(deep)):
        decoded = torch.from_numpy(decode_image(Path(file), config.img_size, "RGB")).permute(2, 0, 1)[None]
        expected = transform(decoded)
        with Image.open(file) as image:
            image.load()
        inputs = [file, image, [image]]
        if image.mode == "RGB":
            pixels = np.array(image)
            inputs += [pixels, torch.from_numpy(pixels).permute(2, 0, 1)]
        for given in inputs:
            assert torch.equal(processor(given, return_tensors="pt")["pixel_values"], expected)
    with pytest.raises(ConfigError, match="uint8"):
        processor(np.zeros((8, 8, 3), dtype=np.float32))


@pytest.mark.parametrize("in_chans", [1, 3])
def test_image_pipeline_top1_equals_cct_predict(in_chans: int, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    save_model(vision_model(in_chans=in_chans, seed=in_chans), tmp_path / "model")
    out = tmp_path / "hf"
    assert main(["export", str(tmp_path / "model"), "--format", "hf", "--output", str(out)]) == 0
    files = write_images(tmp_path / "images", [(32, 32, "RGB"), (40, 50, "RGB"), (17, 64, "L"), (90, 33, "L")])
    predicted = fp32_predictions(capsys, str(tmp_path / "model"), *files)
    pipe = transformers.pipeline("image-classification", model=str(out), device="cpu")
    results = pipe(files, top_k=5)
    for record, result in zip(predicted, results):
        top = record["predictions"][0]
        assert result[0]["label"] == top["label"]
        assert result[0]["score"] == pytest.approx(top["probability"], abs=2e-6)
        scores = {r["label"]: r["score"] for r in result}
        assert all(scores[p["label"]] == pytest.approx(p["probability"], abs=2e-6) for p in record["predictions"])


# ------------------------------------------------------------------------------------------------ text


def test_text_round_trip_keeps_the_logits(text_model: torch.nn.Module, tmp_path: Path) -> None:
    vocab = Vocabulary.from_dict(text_model.config.extra["vocab"])
    ids, lengths = encode_texts(TEXTS, vocab, text_model.config.seq_len)
    mask = torch.arange(ids.shape[1])[None, :] < lengths[:, None]
    out = hf.export_transformers(text_model, tmp_path / "hf")
    assert {p.name for p in out.iterdir()} >= {"config.json", "model.safetensors", "tokenizer.json"}
    hf_model = transformers.AutoModelForSequenceClassification.from_pretrained(out).eval()
    assert isinstance(hf_model, hf.CctForSequenceClassification)
    assert hf_model.config.id2label == {0: "neg", 1: "neu", 2: "pos"}
    with torch.no_grad():
        expected = text_model(ids, mask)
        assert torch.equal(hf.to_transformers(text_model)(input_ids=ids, attention_mask=mask.long()).logits, expected)
        assert torch.equal(hf_model(input_ids=ids, attention_mask=mask.long()).logits, expected)
        back = hf.from_transformers(out)
        assert torch.equal(back(ids, mask), expected)
    assert back.config == text_model.config
    labels = torch.randint(0, 3, (len(TEXTS),))
    output = hf_model(input_ids=ids, attention_mask=mask.long(), labels=labels)
    assert torch.allclose(output.loss, F.cross_entropy(output.logits, labels))


def test_tokenizer_encodes_as_encode_texts(text_model: torch.nn.Module, tmp_path: Path) -> None:
    out = hf.export_transformers(text_model, tmp_path / "hf")
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    assert isinstance(tokenizer, hf.CctTokenizer)
    seq_len = text_model.config.seq_len
    texts = [*TEXTS, "the ant " * 20, "<pad>"]
    ids, lengths = encode_texts(texts, Vocabulary.from_dict(text_model.config.extra["vocab"]), seq_len)
    encoded = tokenizer(texts, padding="max_length", return_tensors="pt")
    assert torch.equal(encoded["input_ids"], ids)
    assert torch.equal(encoded["attention_mask"].sum(dim=1), lengths)
    assert set(encoded) == {"input_ids", "attention_mask"}
    assert len(tokenizer("the ant " * 20)["input_ids"]) == seq_len  # cut to seq_len without being asked
    for text in TRICKY:  # the words themselves, before the vocabulary: "<unk>" hides nothing here
        backend = tokenizer.backend_tokenizer
        words = [w for w, _ in backend.pre_tokenizer.pre_tokenize_str(backend.normalizer.normalize_str(text))]
        assert words == tokenize(text), text


def test_tokenizer_rules_match_tokenize_on_every_character() -> None:
    """Every character Python knows: inside a word, between the Greek capitals that decide a final sigma and
    before a clitic; chunked only to keep each tokenizers call short."""
    normalizer, pre_tokenizer = hf._normalizer(), hf._pre_tokenizer()
    chars = [chr(c) for c in range(sys.maxunicode + 1)
             if unicodedata.category(chr(c)) not in ("Cn", "Cs") and c not in UNICODE_CHANGED]  # fmt: skip
    for start in range(0, len(chars), 2000):
        text = " ".join(f"a{c}b \u0391{c}\u03a3 \u0391\u03a3{c}\u0391 {c}'s" for c in chars[start : start + 2000])
        words = [w for w, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text))]
        assert words == tokenize(text), f"characters from U+{ord(chars[start]):04X}"


def test_text_pipeline_top1_equals_cct_predict(text_model: torch.nn.Module, tmp_path: Path,
                                               capsys: pytest.CaptureFixture) -> None:
    save_model(text_model, tmp_path / "model")
    out = tmp_path / "hf"
    assert main(["export", str(tmp_path / "model"), "--format", "hf", "--output", str(out)]) == 0
    texts = ["the ant walked", "eels don't walk!", "It's GREAT <br/> isn't it", "the cat " * 30, ""]
    predicted = fp32_predictions(capsys, str(tmp_path / "model"), *texts)
    pipe = transformers.pipeline("text-classification", model=str(out), device="cpu")
    for record, result in zip(predicted, pipe(texts, top_k=3)):
        assert result[0]["label"] == record["predictions"][0]["label"]
        scores = {r["label"]: r["score"] for r in result}
        assert all(scores[p["label"]] == pytest.approx(p["probability"], abs=2e-6) for p in record["predictions"])


def test_a_frozen_word_embedding_stays_frozen(tmp_path: Path) -> None:
    vocab = Vocabulary.build(["a b c"])
    model = create_model("text_cct_2_1x1", num_classes=2, vocab_size=len(vocab), word_dim=8, freeze_embedding=True,
                         extra={"vocab": vocab.to_dict()})  # fmt: skip
    out = hf.export_transformers(model, tmp_path / "hf")
    for loaded in (transformers.AutoModelForSequenceClassification.from_pretrained(out), hf.to_transformers(model)):
        assert not loaded.cct.embedder.embeddings.weight.requires_grad
        assert loaded.cct.classifier.fc.weight.requires_grad


def test_a_left_padded_mask_is_refused(text_model: torch.nn.Module) -> None:
    hf_model = hf.to_transformers(text_model)
    ids = torch.tensor([[1, 1, 5, 6]])
    with pytest.raises(ConfigError, match="right padding"):
        hf_model(input_ids=ids, attention_mask=torch.tensor([[0, 0, 1, 1]]))


# ---------------------------------------------------------------------------------------------- errors


def test_mistakes_are_reported(text_model: torch.nn.Module, tmp_path: Path) -> None:
    out = hf.export_transformers(text_model, tmp_path / "hf")
    with pytest.raises(ConfigError, match="CctForSequenceClassification"):
        transformers.AutoModelForImageClassification.from_pretrained(out)
    save_model(text_model, tmp_path / "ours")
    with pytest.raises(CheckpointError, match="export_transformers"):
        hf.from_transformers(tmp_path / "ours")
    with pytest.raises(CheckpointError, match="no config.json"):
        hf.from_transformers(tmp_path)
    without_vocab = create_model("text_cct_2_1x1", num_classes=2, vocab_size=10, word_dim=8)
    with pytest.raises(ConfigError, match="vocabulary"):
        hf.export_transformers(without_vocab, tmp_path / "nope")


def test_missing_transformers_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "transformers", None)  # what `import transformers` finds when it is absent
    monkeypatch.delitem(sys.modules, "compact_transformers.integrations.transformers")
    with pytest.raises(ImportError, match=r"compact-transformers\[hf\]"):
        importlib.import_module("compact_transformers.integrations.transformers")
