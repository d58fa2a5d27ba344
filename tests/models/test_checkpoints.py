"""Saving, loading and adapting checkpoints: round trips, PE resizing, head replacement, shapes."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from compact_transformers.models import (
    TextCompactTransformer,
    TextConfig,
    create_model,
    load_model,
    read_state_dict,
    save_model,
)


def _logits(model: torch.nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(inputs)


@pytest.mark.parametrize("target", ["directory", "model.safetensors"])
def test_vision_round_trip(target: str, tmp_path) -> None:
    model = create_model("cvt_2_4_32_sine", num_classes=7, img_size=(32, 48))
    images = torch.randn(2, 3, 32, 48)
    path = tmp_path / target
    written = save_model(model, path)
    assert written.exists() and written.suffix == ".safetensors"
    if target == "directory":
        config = json.loads((path / "config.json").read_text())
        assert config["kind"] == "vision" and config["num_classes"] == 7 and config["img_size"] == [32, 48]
    loaded = load_model(path)
    assert type(loaded) is type(model) and loaded.config == model.config
    torch.testing.assert_close(_logits(loaded, images), _logits(model, images), atol=0, rtol=0)
    assert not any(name.endswith(".tmp") for name in (p.name for p in tmp_path.rglob("*")))


def test_text_round_trip_keeps_a_frozen_embedding_frozen(tmp_path) -> None:
    config = TextConfig(family="cct", vocab_size=40, word_dim=12, embed_dim=16, num_heads=2, num_layers=1,
                        seq_len=16, num_classes=3, kernel_size=2, freeze_embedding=True)
    model = TextCompactTransformer(config, pretrained_embedding=torch.randn(40, 12))
    ids = torch.randint(2, 40, (3, 16))
    save_model(model, tmp_path / "text.safetensors")
    loaded = load_model(tmp_path / "text.safetensors")
    assert isinstance(loaded, TextCompactTransformer)
    assert not loaded.embedder.embeddings.weight.requires_grad
    torch.testing.assert_close(_logits(loaded, ids), _logits(model, ids), atol=0, rtol=0)


def _grid(embedding: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(1, H*W, d) row-major tokens -> (1, d, H, W)."""
    return embedding.reshape(1, height, width, -1).permute(0, 3, 1, 2)


@pytest.mark.parametrize("name,prefix", [("cct_2_3x2_32", 0), ("vit_2_4_32", 1)])
def test_learnable_embedding_is_resized_for_a_new_image_size(name: str, prefix: int, tmp_path) -> None:
    source = create_model(name)
    save_model(source, tmp_path / "saved")
    model = create_model(name, img_size=(32, 48), pretrained=tmp_path / "saved")
    pe_old = source.classifier.positional_emb.detach()
    pe_new = model.classifier.positional_emb.detach()
    assert model.grid_size == (8, 12) and pe_new.shape == (1, prefix + 8 * 12, 128)
    expected = F.interpolate(_grid(pe_old[:, prefix:], 8, 8), size=(8, 12), mode="bilinear", align_corners=False)
    torch.testing.assert_close(_grid(pe_new[:, prefix:], 8, 12), expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(pe_new[:, :prefix], pe_old[:, :prefix], atol=0, rtol=0)  # class token's PE
    for key, tensor in source.state_dict().items():
        if key != "classifier.positional_emb":
            assert torch.equal(model.state_dict()[key], tensor), key
    assert model(torch.randn(2, 3, 32, 48)).shape == (2, 10)


def test_resize_from_a_non_square_checkpoint(tmp_path) -> None:
    source = create_model("cct_2_3x2_32", img_size=(32, 48))
    save_model(source, tmp_path / "rect.safetensors")
    model = create_model("cct_2_3x2_32", img_size=(64, 96), pretrained=tmp_path / "rect.safetensors")
    expected = F.interpolate(_grid(source.classifier.positional_emb.detach(), 8, 12), size=(16, 24),
                             mode="bilinear", align_corners=False)
    torch.testing.assert_close(_grid(model.classifier.positional_emb.detach(), 16, 24), expected, atol=1e-6, rtol=0)


def test_sine_checkpoint_at_another_size_gets_the_right_table(tmp_path, ref) -> None:
    save_model(create_model("cct_2_3x2_32_sine"), tmp_path / "sine")
    model = create_model("cct_2_3x2_32_sine", img_size=48, pretrained=tmp_path / "sine")
    torch.testing.assert_close(model.classifier.positional_emb, ref.sine_table(12 * 12, 128), atol=1e-6, rtol=0)


def test_head_is_replaced_with_a_warning_and_the_rest_loads(tmp_path) -> None:
    source = create_model("cct_2_3x2_32")
    torch.save(source.state_dict(), tmp_path / "ten.pth")
    with pytest.warns(UserWarning, match="head has 10 classes, the model 5"):
        model = create_model("cct_2_3x2_32", num_classes=5, pretrained=tmp_path / "ten.pth")
    assert model.classifier.fc.weight.shape == (5, 128)
    loaded = model.state_dict()
    for key, tensor in source.state_dict().items():
        if not key.startswith("classifier.fc."):
            assert torch.equal(loaded[key], tensor), key
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 5)


def test_headless_model_drops_the_checkpoint_head(tmp_path) -> None:
    source = create_model("cvt_2_4_32")
    save_model(source, tmp_path / "w.safetensors")
    features = create_model("cvt_2_4_32", num_classes=0, pretrained=tmp_path / "w.safetensors").eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(features(images), source.eval().forward_features(images), atol=1e-6, rtol=0)


def test_wrapped_reference_checkpoints_are_unwrapped(tmp_path) -> None:
    source = create_model("cct_2_3x2_32")
    wrapped = {"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}, "epoch": 3}
    torch.save(wrapped, tmp_path / "wrapped.pth")
    state = read_state_dict(tmp_path / "wrapped.pth")
    assert sorted(state) == sorted(source.state_dict())
    model = create_model("cct_2_3x2_32", pretrained=tmp_path / "wrapped.pth")
    images = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(_logits(model, images), _logits(source, images), atol=0, rtol=0)


@pytest.mark.parametrize("name", ["cct_2_3x2_32", "cvt_2_4_32", "vit_2_4_32"])
def test_rectangular_and_single_channel_models_run(name: str) -> None:
    rect = create_model(name, img_size=(32, 48))
    out = rect(torch.randn(2, 3, 32, 48))
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    assert rect.num_tokens == 8 * 12
    gray = create_model(name, in_chans=1, img_size=28 if name.startswith("cct") else 32, num_classes=4)
    size = gray.config.img_size
    assert gray.tokenizer.conv_layers[0][0].weight.shape[1] == 1
    assert gray(torch.randn(3, 1, *size)).shape == (3, 4)


def test_a_malformed_or_foreign_config_json_is_a_checkpoint_error_naming_the_file(tmp_path: Path) -> None:
    from compact_transformers.errors import CheckpointError

    save_model(create_model("cct_2_3x2_32", img_size=16, in_chans=1, num_classes=3), tmp_path / "m")
    config_path = tmp_path / "m" / "config.json"
    good = config_path.read_text()
    for text, reason in (("{not json", "not a valid JSON"), ("[1, 2]", "expected a JSON object"),
                         (good.replace('"num_layers"', '"num_layerz"'), "does not describe a model")):
        config_path.write_text(text)
        with pytest.raises(CheckpointError, match=reason) as error:
            load_model(tmp_path / "m")
        assert "config.json" in str(error.value) or str(tmp_path / "m") in str(error.value)


def test_saved_model_whose_head_does_not_match_its_config_is_refused(tmp_path) -> None:
    """Weights with a 5-class head and a 2-class config: never a random head for eval/predict/resume."""
    import json

    from compact_transformers.cli import main
    from compact_transformers.errors import CheckpointError
    from compact_transformers.models import load_model, save_model

    save_model(create_model("cct_2_3x2_32", num_classes=5, img_size=(16, 16)), tmp_path / "model")
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    config["num_classes"] = 2
    (tmp_path / "model" / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"head has 5 classes .* config 2"):
        load_model(tmp_path / "model")
    from PIL import Image

    Image.new("RGB", (16, 16)).save(tmp_path / "x.png")
    assert main(["predict", str(tmp_path / "model"), str(tmp_path / "x.png")]) == 2
    # fine-tuning still gets a new head of the asked class count
    with pytest.warns(UserWarning, match="newly initialised"):
        tuned = create_model("cct_2_3x2_32", num_classes=2, img_size=(16, 16), pretrained=tmp_path / "model")
    assert tuned.config.num_classes == 2
