"""The positional embedding kind is honoured by every family: learnable, sinusoidal, none."""

from __future__ import annotations

import pytest
import torch

from compact_transformers.models import count_parameters, create_model

# family preset (small) -> tokens incl. the class token for ViT-Lite, at 32x32
SMALL = {"vit_2_4_32": 8 * 8 + 1, "cvt_2_4_32": 8 * 8, "cct_2_3x2_32": 8 * 8}


@pytest.mark.parametrize("name", list(SMALL))
def test_sine_preset_has_a_frozen_sine_table(name: str, ref) -> None:
    model = create_model(name + "_sine")
    classifier = model.classifier
    pe = classifier.positional_emb
    assert classifier.positional_embedding == "sine"
    torch.testing.assert_close(pe, ref.sine_table(SMALL[name], 128), atol=1e-6, rtol=0)
    assert not isinstance(pe, torch.nn.Parameter)
    assert not pe.requires_grad
    assert all(p is not pe for p in model.parameters())
    assert "classifier.positional_emb" in model.state_dict()
    assert "classifier.positional_emb" not in dict(model.named_parameters())
    # it stays the table through training: no gradient reaches it
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    assert pe.grad is None
    torch.testing.assert_close(pe, ref.sine_table(SMALL[name], 128), atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", list(SMALL))
def test_learnable_preset_has_a_trainable_parameter(name: str) -> None:
    model = create_model(name)
    pe = model.classifier.positional_emb
    assert isinstance(pe, torch.nn.Parameter) and pe.requires_grad
    assert pe.shape == (1, SMALL[name], 128)
    assert dict(model.named_parameters())["classifier.positional_emb"] is pe
    assert 0.1 < pe.std().item() < 0.3  # trunc-normal std .2
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    assert pe.grad is not None and pe.grad.abs().sum() > 0
    sine = create_model(name + "_sine")
    assert count_parameters(model) - count_parameters(sine) == SMALL[name] * 128


@pytest.mark.parametrize("name", list(SMALL))
def test_none_has_no_embedding_and_accepts_other_sizes(name: str) -> None:
    model = create_model(name, positional_embedding="none").eval()
    assert model.classifier.positional_emb is None
    assert not any("positional_emb" in key for key in model.state_dict())
    assert count_parameters(model) == count_parameters(create_model(name)) - SMALL[name] * 128
    for size in ((32, 32), (48, 48), (16, 24), (40, 64)):
        assert model(torch.randn(2, 3, *size)).shape == (2, 10)


@pytest.mark.parametrize("name", list(SMALL))
def test_embedding_built_for_one_size_rejects_another(name: str) -> None:
    model = create_model(name)
    with pytest.raises(ValueError, match="positional embedding"):
        model(torch.randn(1, 3, 48, 48))


def test_positional_embedding_changes_the_output() -> None:
    """The table is actually added: permuting its rows changes the logits (an unused PE would not)."""
    model = create_model("cct_2_3x2_32_sine").eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = model(images)
        model.classifier.positional_emb.copy_(model.classifier.positional_emb.flip(1))
        after = model(images)
    assert (before - after).abs().max() > 1e-4


def test_unknown_positional_embedding_kind_is_rejected() -> None:
    with pytest.raises(ValueError, match="positional_embedding must be one of"):
        create_model("cct_2_3x2_32", positional_embedding="rotary")
