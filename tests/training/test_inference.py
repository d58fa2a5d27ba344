"""The bf16 inference copy (eager and compiled) computes what the fp32 model computes, within bf16 precision,
and the evaluation path picks it by measurement."""

from __future__ import annotations

import logging
import time

import pytest
import torch

from compact_transformers.errors import ConfigError
from compact_transformers.models import create_model
from compact_transformers.training import runtime
from compact_transformers.training.runtime import LowPrecisionInference, inference_model, prepare_input


def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("cct_2_3x2_32", img_size=(16, 16), num_classes=5, embed_dim=64).eval()


def images(count: int) -> torch.Tensor:
    return prepare_input(torch.randn(count, 3, 16, 16, generator=torch.Generator().manual_seed(count)))


def test_the_bf16_copy_matches_the_fp32_model_and_leaves_it_alone() -> None:
    model = tiny_model()
    batch = images(32)
    with torch.no_grad():
        expected = model(batch)
        logits = LowPrecisionInference(model, torch.bfloat16)(batch)
    assert logits.dtype == torch.float32 and logits.shape == (32, 5)
    scale = expected.abs().max().item()
    assert (logits - expected).abs().max().item() < 0.05 * scale
    assert (logits.argmax(1) == expected.argmax(1)).float().mean().item() >= 0.9
    assert {p.dtype for p in model.parameters()} == {torch.float32}  # the caller's model is untouched


@pytest.mark.slow
def test_the_compiled_copy_matches_the_eager_copy_and_pads_a_short_batch() -> None:
    model = tiny_model()
    eager = LowPrecisionInference(model, torch.bfloat16)
    compiled = LowPrecisionInference(model, torch.bfloat16).compile_for(8)
    full, short = images(8), images(3)
    with torch.no_grad():
        torch.testing.assert_close(compiled(full), eager(full), atol=0.05, rtol=0.05)
        out = compiled(short)
        assert out.shape == (3, 5)
        torch.testing.assert_close(out, eager(short), atol=0.05, rtol=0.05)
    assert compiled.compiled is not None  # no fallback happened


def test_a_failing_compile_falls_back_to_eager_and_says_so(monkeypatch: pytest.MonkeyPatch,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    def broken_compile(module: torch.nn.Module, **options: object) -> torch.nn.Module:
        def fail(_: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("no C++ compiler found\nmore detail")
        return fail

    monkeypatch.setattr(torch, "compile", broken_compile)
    model = tiny_model()
    runner = LowPrecisionInference(model, torch.bfloat16).compile_for(4)
    batch = images(4)
    with caplog.at_level(logging.WARNING), torch.no_grad():
        logits = runner(batch)
        again = runner(batch)
    torch.testing.assert_close(logits, LowPrecisionInference(model, torch.bfloat16)(batch))
    torch.testing.assert_close(again, logits)
    warnings = [r.getMessage() for r in caplog.records if "torch.compile failed" in r.getMessage()]
    assert warnings == ["torch.compile failed (RuntimeError: no C++ compiler found); running eagerly"]


def test_inference_model_compiles_only_a_long_evaluation(monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiny_model()
    batch = images(4)
    assert inference_model(model, batch, amp_dtype=None, batches=10**6) is model  # fp32: the model itself
    assert inference_model(model, batch, amp_dtype=torch.bfloat16, batches=1) is model  # short: as training evaluates
    monkeypatch.setattr(runtime, "COMPILE_WORTH_S", 0.0)
    timings = iter([0.010, 0.005])  # eager, then compiled: the compiled copy is faster
    monkeypatch.setattr(runtime, "_second_call_seconds", lambda model, batch: next(timings))
    long = inference_model(model, batch, amp_dtype=torch.bfloat16, batches=10)
    assert isinstance(long, LowPrecisionInference) and long.compiled is not None and long.batch_size == 4
    assert not model.training  # tiny_model is in eval mode, and stays so


def test_inference_model_keeps_the_model_where_the_compiled_copy_is_not_faster(
        monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiny_model()
    monkeypatch.setattr(runtime, "COMPILE_WORTH_S", 0.0)
    timings = iter([0.005, 0.010])  # eager faster
    monkeypatch.setattr(runtime, "_second_call_seconds", lambda model, batch: next(timings))
    assert inference_model(model, images(4), amp_dtype=torch.bfloat16, batches=10) is model


def test_second_call_seconds_times_the_second_call() -> None:
    calls = []

    def model(batch: torch.Tensor) -> None:
        calls.append(batch)
        if len(calls) == 1:
            time.sleep(0.2)  # what a first call builds

    assert runtime._second_call_seconds(model, torch.zeros(1)) < 0.1 and len(calls) == 2


def test_inference_model_restores_training_mode_when_the_batch_is_rejected() -> None:
    model = tiny_model().train()
    wrong_channels = prepare_input(torch.randn(2, 1, 16, 16))
    with pytest.raises(ConfigError, match="1 channels"):
        inference_model(model, wrong_channels, amp_dtype=torch.bfloat16, batches=1)
    assert model.training
