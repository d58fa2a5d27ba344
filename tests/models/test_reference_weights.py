"""Checkpoints in the authors' key layout load strictly and compute the reference network."""

from __future__ import annotations

import pytest
import torch

from compact_transformers.models import create_model

# name -> (family for the reference, architecture written out by hand from the preset name)
CASES = {
    "cct_2_3x2_32": dict(family="cct", kernel_size=3, n_conv_layers=2, num_tokens=8 * 8, positional="learnable"),
    "cvt_2_4_32": dict(family="cvt", patch_size=4, num_tokens=8 * 8, positional="learnable"),
    "vit_2_4_32": dict(family="vit", patch_size=4, num_tokens=8 * 8, positional="learnable"),
    "cct_2_3x2_32_sine": dict(family="cct", kernel_size=3, n_conv_layers=2, num_tokens=8 * 8, positional="sine"),
    "cvt_2_4_32_sine": dict(family="cvt", patch_size=4, num_tokens=8 * 8, positional="sine"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_reference_checkpoint_loads_and_matches_hand_written_forward(name: str, tmp_path, ref) -> None:
    case = CASES[name]
    state = ref.state_dict(embed_dim=128, num_layers=2, mlp_ratio=1.0, num_classes=10, seed=1, **case)
    path = tmp_path / f"{name}.pth"
    torch.save(state, path)

    model = create_model(name, pretrained=path).eval()

    own = model.state_dict()
    assert sorted(own) == sorted(state), "the model's keys differ from the reference layout"
    for key, tensor in state.items():
        assert torch.equal(own[key], tensor), key
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected = ref.forward(
            state,
            images,
            family=case["family"],
            num_heads=2,
            kernel_size=case.get("kernel_size", 3),
            patch_size=case.get("patch_size", 4),
        )
        got = model(images)
    assert got.shape == (3, 10)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    # The reference network is not trivially constant: different images give different logits.
    assert (expected[0] - expected[1]).abs().max() > 1e-2


def test_reference_forward_is_sensitive_to_the_block_order(tmp_path, ref) -> None:
    """Guards the comparison above: a post-norm variant of the same weights gives other logits."""
    case = CASES["cct_2_3x2_32"]
    state = ref.state_dict(embed_dim=128, num_layers=2, mlp_ratio=1.0, num_classes=10, seed=2, **case)
    torch.save(state, tmp_path / "w.pth")
    model = create_model("cct_2_3x2_32", pretrained=tmp_path / "w.pth").eval()
    swapped = dict(state)
    for j in range(2):  # swap the two norms of each block: a different network with the same shapes
        for suffix in ("weight", "bias"):
            a, b = f"classifier.blocks.{j}.pre_norm.{suffix}", f"classifier.blocks.{j}.norm1.{suffix}"
            swapped[a], swapped[b] = state[b], state[a]
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        wrong = ref.forward(swapped, images, family="cct", num_heads=2)
        assert (model(images) - wrong).abs().max() > 1e-3


def test_sine_checkpoint_keeps_the_sine_table(tmp_path, ref) -> None:
    state = ref.state_dict(
        "cct", embed_dim=128, num_layers=2, mlp_ratio=1.0, num_classes=10, num_tokens=64, kernel_size=3,
        n_conv_layers=2, positional="sine",
    )
    torch.save(state, tmp_path / "sine.pth")
    model = create_model("cct_2_3x2_32_sine", pretrained=tmp_path / "sine.pth")
    pe = model.classifier.positional_emb
    torch.testing.assert_close(pe, ref.sine_table(64, 128), atol=1e-6, rtol=0)
    assert not pe.requires_grad
