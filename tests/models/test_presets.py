"""Presets against the paper's table: parameter counts, MACs, names, aliases and listing."""

from __future__ import annotations

import pytest
import torch

from compact_transformers.models import (
    PRESETS,
    complexity,
    count_macs,
    count_parameters,
    create_model,
    get_preset,
    list_models,
    resolve_name,
)

# Paper table (32x32, 10 classes): name -> (params in M, MACs in G), both rounded to 2 decimals.
PAPER_TABLE = {
    "vit_7_16_32": (3.89, 0.02),
    "vit_6_16_32": (3.36, 0.02),
    "vit_7_8_32": (3.74, 0.06),
    "vit_6_8_32": (3.22, 0.06),
    "vit_7_4_32": (3.72, 0.26),
    "vit_6_4_32": (3.19, 0.22),
    "cvt_7_8_32": (3.74, 0.06),
    "cvt_6_8_32": (3.21, 0.05),
    "cvt_7_4_32": (3.72, 0.25),
    "cvt_6_4_32": (3.19, 0.22),
    "cct_2_3x2_32": (0.28, 0.04),
    "cct_4_3x2_32": (0.48, 0.05),
    "cct_6_3x2_32": (3.33, 0.25),
    "cct_7_3x2_32": (3.85, 0.29),
    "cct_6_3x1_32": (3.23, 1.02),
    "cct_7_3x1_32": (3.76, 1.19),
    "cct_14_7x2_224": (22.36, 5.53),
}
EXACT_PARAMS = {
    "cct_2_3x2_32": 283_723,
    "cct_7_3x1_32": 3_760_139,
    "cvt_7_4_32": 3_716_619,
    "vit_7_4_32": 3_716_874,
    "cct_14_7x2_224": 22_367_273,
}


def _meta_model(name: str, **overrides: object) -> torch.nn.Module:
    """Build on the meta device: shapes only, so that even the 224 px model costs nothing to count."""
    with torch.device("meta"):
        return create_model(name, **overrides)


def _meta_macs(model: torch.nn.Module) -> int:
    config = model.config
    return count_macs(model, torch.zeros(1, config.in_chans, *config.img_size, device="meta"))


@pytest.mark.parametrize("name", list(PAPER_TABLE))
def test_paper_table_params_and_macs(name: str) -> None:
    params_m, macs_g = PAPER_TABLE[name]
    model = _meta_model(name)
    params = count_parameters(model)
    if name in EXACT_PARAMS:
        assert params == EXACT_PARAMS[name]
        # the paper truncates 22,367,273 to 22.36M; every other row is rounded
        assert abs(params / 1e6 - params_m) < 0.01
    else:
        assert round(params / 1e6, 2) == pytest.approx(params_m, abs=1e-9), f"{name}: {params} params"
    macs = _meta_macs(model) / 1e9
    assert abs(macs - macs_g) <= 0.02 * macs_g + 0.005, f"{name}: {macs:.4f} GMACs vs paper {macs_g}"


def test_paper_table_aliases_resolve_to_the_counted_presets() -> None:
    assert resolve_name("ViT-Lite-7/8") == "vit_7_8_32"
    assert resolve_name("CVT-7/8") == "cvt_7_8_32"
    assert resolve_name("CCT-7/3x2") == "cct_7_3x2_32"
    assert resolve_name("CCT-7/3x1") == "cct_7_3x1_32"
    assert resolve_name("vit_lite_7_4_32") == "vit_7_4_32"
    assert resolve_name("cct_7_3x1_32_learnable") == "cct_7_3x1_32"
    assert resolve_name("text_cct_2") == "text_cct_2_4x1"


def test_sine_variant_counts_the_table_as_a_buffer_not_a_parameter() -> None:
    """Paper row "CCT-7/3x1 (sine) 3.76M" counts the table (the reference trained it); it is frozen here."""
    learnable, sine = _meta_model("cct_7_3x1_32"), _meta_model("cct_7_3x1_32_sine")
    pe_size = 16 * 16 * 256  # 16x16 tokens (one conv + pool on 32 px) x width 256
    assert count_parameters(sine) == count_parameters(learnable) - pe_size
    total = sum(t.numel() for t in sine.state_dict().values())
    assert round(total / 1e6, 2) == 3.76


def test_meta_counts_equal_real_counts_and_complexity() -> None:
    """The meta-device shortcut above counts what a real model has; complexity() agrees on CPU."""
    real = create_model("cct_2_3x2_32")
    info = complexity(real, name="cct_2_3x2_32")
    assert info.params == count_parameters(real) == EXACT_PARAMS["cct_2_3x2_32"]
    assert info.macs == _meta_macs(_meta_model("cct_2_3x2_32"))
    assert info.tokens == 64 and info.img_size == (32, 32) and info.num_classes == 10
    assert info.to_dict()["params"] == info.params
    # complexity() restores the model's training state and attention kernels
    assert real.training and all(b.self_attn.impl == "auto" for b in real.classifier.blocks)


def test_macs_grow_with_tokens() -> None:
    small = _meta_macs(_meta_model("cvt_7_8_32"))
    large = _meta_macs(_meta_model("cvt_7_4_32"))
    assert large > 3.5 * small  # 4x the tokens, plus quadratic attention


def test_text_model_complexity() -> None:
    model = create_model("text_cct_2_1x1", vocab_size=50, word_dim=16, seq_len=32)
    info = complexity(model)
    assert info.img_size is None and info.tokens == model.tokenizer.output_length(32)
    # the paper counts text models without their word embedding (frozen GloVe vectors there)
    assert info.embedding_params == 50 * 16
    assert info.params == count_parameters(model) - 50 * 16 and info.macs > 0


def test_text_preset_parameters_match_the_paper_table_10() -> None:
    # Table 10: CCT-2/1x1 0.238M, Transformer-2 1.086M (4 classes, 300-d word vectors, embedding excluded)
    for name, paper in (("text_cct_2_1x1", 0.238), ("text_transformer_2", 1.086)):
        with torch.device("meta"):
            model = create_model(name, num_classes=4)
        assert round(complexity(model).params / 1e6, 3) == paper, name


def test_list_models_patterns() -> None:
    everything = list_models()
    assert everything == sorted(PRESETS) and len(everything) == len(set(everything))
    cct_32 = list_models("cct_*_32")
    assert "cct_7_3x1_32" in cct_32 and all(n.startswith("cct_") and n.endswith("_32") for n in cct_32)
    assert set(list_models("*_sine")) == {n for n in PRESETS if n.endswith("_sine")}
    text = list_models(kind="text")
    assert text and all(PRESETS[n].kind == "text" for n in text)
    assert "text_transformer_2" in text and "cct_7_3x1_32" not in text
    pretrained = list_models(pretrained=True)
    assert "cct_7_3x1_32" in pretrained and "cct_14_7x2_224" in pretrained
    assert "vit_7_4_32" not in pretrained and "cvt_7_4_32" not in pretrained
    assert list_models("no_such_model_*") == []


def test_every_paper_row_has_its_sine_twin_and_metadata() -> None:
    for name in PAPER_TABLE:
        assert get_preset(name).config["positional_embedding"] == "learnable"
        assert get_preset(name + "_sine").config["positional_embedding"] == "sine"
    assert get_preset("cct_7_3x1_32").paper_accuracy["cifar10"] == 96.53
    assert get_preset("cct_7_3x1_32_c100").config["num_classes"] == 100
