"""Property-based tests of the model factory: any valid preset, size and channel count builds and runs;
anything invalid raises the library's own error (never a bare torch or Python error)."""

from __future__ import annotations

import pytest
import torch

from compact_transformers import create_model, list_models
from compact_transformers.models import get_preset
from compact_transformers.errors import UserError

hypothesis = pytest.importorskip("hypothesis", reason="needs hypothesis (the [dev] extra)")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

# Small backbones keep each example fast; every tokenizer kind and positional embedding is among them.
SMALL_VISION = [n for n in list_models() if n.split("_")[1] in ("2", "4") and not n.startswith("text")]
SMALL_TEXT = [n for n in list_models("text_*") if "_2_" in n or n.startswith("text_transformer_2")]
SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(
    name=st.sampled_from(SMALL_VISION),
    size=st.tuples(st.integers(min_value=8, max_value=48), st.integers(min_value=8, max_value=48)),
    in_chans=st.integers(min_value=1, max_value=4),
    num_classes=st.integers(min_value=1, max_value=12),
    batch=st.integers(min_value=1, max_value=3),
)
def test_any_valid_vision_model_builds_and_runs(name: str, size: tuple[int, int], in_chans: int,
                                                num_classes: int, batch: int) -> None:
    config = get_preset(name).build_config()
    height, width = size
    if config.family != "cct":  # patch tokenizers need whole patches: round up to a multiple
        patch = config.patch_size
        height, width = patch * -(-height // patch), patch * -(-width // patch)
    mean, std = (0.5,) * in_chans, (0.25,) * in_chans
    model = create_model(name, img_size=(height, width), in_chans=in_chans, num_classes=num_classes,
                         mean=mean, std=std).eval()
    with torch.no_grad():
        logits = model(torch.randn(batch, in_chans, height, width))
    assert logits.shape == (batch, num_classes)
    assert torch.isfinite(logits).all()


@SETTINGS
@given(
    name=st.sampled_from(SMALL_TEXT),
    seq_len=st.integers(min_value=4, max_value=40),
    vocab_size=st.integers(min_value=3, max_value=50),
    word_dim=st.integers(min_value=2, max_value=24),
    lengths=st.lists(st.integers(min_value=1, max_value=40), min_size=1, max_size=3),
)
def test_any_valid_text_model_builds_and_runs(name: str, seq_len: int, vocab_size: int, word_dim: int,
                                              lengths: list[int]) -> None:
    config = get_preset(name).build_config()
    if config.family in ("cvt", "vit_lite"):  # whole patches of words
        seq_len = config.patch_size * -(-seq_len // config.patch_size)
    if config.family == "transformer":  # the words are the tokens: their width is split between the heads
        word_dim = config.num_heads * -(-word_dim // config.num_heads)
    model = create_model(name, seq_len=seq_len, vocab_size=vocab_size, word_dim=word_dim, num_classes=3).eval()
    ids = torch.randint(2, vocab_size, (len(lengths), seq_len))
    for row, length in enumerate(lengths):
        ids[row, min(length, seq_len):] = 1  # padding
    with torch.no_grad():
        logits = model(ids)
    assert logits.shape == (len(lengths), 3) and torch.isfinite(logits).all()


INVALID = st.one_of(
    st.fixed_dictionaries({"img_size": st.integers(max_value=0)}),
    st.fixed_dictionaries({"img_size": st.tuples(st.integers(1, 32), st.integers(max_value=0))}),
    st.fixed_dictionaries({"in_chans": st.integers(max_value=0)}),
    st.fixed_dictionaries({"num_classes": st.integers(max_value=-1)}),
    st.fixed_dictionaries({"num_layers": st.integers(max_value=0)}),
    st.fixed_dictionaries({"num_heads": st.integers(max_value=0)}),
    st.fixed_dictionaries({"embed_dim": st.integers(max_value=0)}),
    st.fixed_dictionaries({"num_heads": st.sampled_from([3, 5, 7])}),  # 128 is not divisible by them
    st.fixed_dictionaries({"mlp_ratio": st.floats(max_value=0.0, allow_nan=False)}),
    st.fixed_dictionaries({"dropout": st.floats(min_value=1.01, max_value=10.0)}),
    st.fixed_dictionaries({"drop_path": st.floats(max_value=-0.01, min_value=-5.0)}),
    st.fixed_dictionaries({"mean": st.just((0.5, 0.5))}),  # 2 values for 3 channels
    st.fixed_dictionaries({"positional_embedding": st.text(min_size=1, max_size=8).filter(
        lambda s: s not in ("learnable", "sine", "none"))}),
    st.fixed_dictionaries({"not_an_option": st.integers()}),
)


@SETTINGS
@given(name=st.sampled_from(["cct_2_3x2_32", "cvt_2_4_32", "vit_2_4_32"]), overrides=INVALID)
def test_invalid_settings_raise_the_librarys_own_error(name: str, overrides: dict) -> None:
    with pytest.raises(UserError):
        create_model(name, **overrides)


@SETTINGS
@given(name=st.text(min_size=1, max_size=20).filter(lambda s: s.strip() and s not in list_models()))
def test_unknown_names_raise_the_librarys_own_error(name: str) -> None:
    with pytest.raises(UserError):
        create_model(name)
