"""The fast path of `cct train` / `cct predict` (runtime.py, the recipe's optimizer) against the paper's
reference form: fp32, NCHW, explicit attention, plain AdamW. Same weights, same batch; forward and
gradients must agree within the tolerance of the precision used."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from compact_transformers.models import create_model
from compact_transformers.training.optim import build_optimizer, param_groups
from compact_transformers.training.recipe import TrainConfig
from compact_transformers.training.runtime import autocast_dtype, prepare_input, prepare_model, tune_cpu

CPU = torch.device("cpu")
NO_DROPOUT = {"drop_path": 0.0, "dropout": 0.0, "attn_dropout": 0.0}


def pair(model_name: str = "cct_2_3x2_32", **overrides: object) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(baseline, fast) copies of one randomly initialised model."""
    torch.manual_seed(0)
    kwargs = {"img_size": (16, 16), "num_classes": 10, **NO_DROPOUT, **overrides}
    baseline = create_model(model_name, attn_impl="explicit", **kwargs)
    fast = create_model(model_name, attn_impl="auto", **kwargs)
    fast.load_state_dict(baseline.state_dict())
    return baseline, prepare_model(fast, CPU)


def batch(channels: int = 3, size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(8, channels, size, size, generator=generator), torch.randint(0, 10, (8,), generator=generator)


def loss_and_grads(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor,
                   dtype: torch.dtype | None) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    model.train()
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
        logits = model(prepare_input(images)).float()
    loss = F.cross_entropy(logits, labels)
    loss.backward()
    grads = {name: p.grad.float().clone() for name, p in model.named_parameters() if p.grad is not None}
    return logits.detach(), loss.detach(), grads


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return F.cosine_similarity(a.flatten(), b.flatten(), dim=0).item()


def test_channels_last_in_fp32_matches_nchw_forward_and_gradients() -> None:
    baseline, fast = pair()
    images, labels = batch()
    ref_logits, ref_loss, ref_grads = loss_and_grads(baseline, images, labels, None)
    logits, loss, grads = loss_and_grads(fast, images, labels, None)
    assert next(p for p in fast.parameters() if p.ndim == 4).is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(logits, ref_logits, atol=1e-5, rtol=1e-4)
    assert torch.allclose(loss, ref_loss, atol=1e-6)
    assert grads.keys() == ref_grads.keys()
    for name, grad in grads.items():
        assert torch.allclose(grad, ref_grads[name], atol=1e-6, rtol=1e-3), name


def test_fast_path_with_bf16_autocast_matches_fp32_baseline_within_bf16_tolerance() -> None:
    baseline, fast = pair()
    images, labels = batch()
    ref_logits, ref_loss, ref_grads = loss_and_grads(baseline, images, labels, None)
    logits, loss, grads = loss_and_grads(fast, images, labels, torch.bfloat16)
    assert (logits - ref_logits).abs().max() < 0.05 * ref_logits.abs().max()
    assert cosine(logits, ref_logits) > 0.999
    assert abs(loss - ref_loss) < 0.02 * ref_loss
    for name, grad in grads.items():  # bf16 keeps 8 bits of mantissa: ~1% error per gradient tensor
        if ref_grads[name].abs().max() > 1e-6:
            assert cosine(grad, ref_grads[name]) > 0.98, name


def test_eval_path_sdpa_channels_last_matches_baseline() -> None:
    baseline, fast = pair("cct_7_3x1_32", img_size=(16, 16))
    images, _ = batch()
    baseline.eval(), fast.eval()
    with torch.no_grad():
        assert torch.allclose(fast(prepare_input(images)), baseline(images), atol=1e-5, rtol=1e-4)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = fast(prepare_input(images)).float()
        reference = baseline(images)
    assert cosine(low, reference) > 0.999
    assert (low.argmax(1) == reference.argmax(1)).float().mean() >= 0.75


def test_recipe_optimizer_matches_plain_adamw_updates() -> None:
    baseline, _ = pair()
    fast = copy.deepcopy(baseline)  # same layout, so the gradients are identical and only the kernel differs
    images, labels = batch()
    config = TrainConfig(lr=1e-3, weight_decay=0.05)
    plain = torch.optim.AdamW(param_groups(baseline, config.weight_decay), lr=config.scaled_lr,
                              betas=config.betas, eps=config.eps, foreach=False)
    recipe = build_optimizer(fast, config)
    grads = {}
    for _ in range(3):
        for model, optimizer in ((baseline, plain), (fast, recipe)):
            _, _, grads = loss_and_grads(model, images, labels, None)
            optimizer.step()
    # Adam turns a gradient that is zero but for rounding noise (the sequence-pooling bias: softmax over
    # tokens ignores a shift shared by all of them) into a full step of random sign; compare the rest
    compared = [n for n, g in grads.items() if g.abs().max() > 1e-6]
    assert len(compared) >= len(grads) - 1
    for (name, p), q in zip(baseline.named_parameters(), fast.parameters()):
        if name in compared:
            assert torch.allclose(p, q, atol=1e-5, rtol=1e-4), name


def test_tune_cpu_changes_speed_settings_not_results() -> None:
    baseline, _ = pair()
    images, labels = batch()
    before_logits, _, before_grads = loss_and_grads(baseline, images, labels, None)
    threads = torch.get_num_threads()
    applied = tune_cpu()
    assert applied["threads"] == threads and "mallopt" in applied
    after_logits, _, after_grads = loss_and_grads(baseline, images, labels, None)
    assert torch.equal(before_logits, after_logits)
    assert all(torch.equal(before_grads[n], after_grads[n]) for n in before_grads)


def test_autocast_dtype_follows_the_amp_switch() -> None:
    assert autocast_dtype(CPU, amp=False) is None
    assert autocast_dtype(CPU, amp=True) in (None, torch.bfloat16)


@pytest.mark.parametrize("name", ["tpu", "xla", "meta", "hpu", "cuda:x", "gpu"])
def test_unsupported_devices_are_config_errors(name: str) -> None:
    from compact_transformers.errors import ConfigError
    from compact_transformers.training.runtime import select_device

    with pytest.raises(ConfigError, match="device"):
        select_device(name)
