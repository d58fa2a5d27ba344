"""The native softmax-dropout kernel: its draw, its two code paths (AVX-512 BF16 rows and portable rows), its
threads, and the fallback to torch's operators when it cannot be built."""

from __future__ import annotations

import logging
import platform
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from compact_transformers.errors import ConfigError
from compact_transformers.models import native
from compact_transformers.models.layers import softmax_dropout, softmax_dropout_keep_mask

pytestmark = pytest.mark.skipif(native.softmax_dropout_library() is None, reason="no C compiler")


def _forward(library, scores: torch.Tensor, p: float, seed: int, threads: int,
             scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    weights, dropped = torch.empty_like(scores), torch.empty_like(scores)
    cols = scores.shape[-1]
    status = library.cct_softmax_dropout_forward(
        scores.data_ptr(), weights.data_ptr(), dropped.data_ptr(), scores.numel() // cols, cols, seed,
        round(p * 2**32), scale, 1.0 / (1.0 - p), int(scores.dtype == torch.bfloat16), threads)
    assert status == 0
    return weights, dropped


def _backward(library, grad: torch.Tensor, weights: torch.Tensor, p: float, seed: int, threads: int) -> torch.Tensor:
    out = torch.empty_like(weights)
    cols = weights.shape[-1]
    status = library.cct_softmax_dropout_backward(
        grad.data_ptr(), weights.data_ptr(), out.data_ptr(), weights.numel() // cols, cols, seed, round(p * 2**32),
        1.0, 1.0 / (1.0 - p), int(weights.dtype == torch.bfloat16), threads)
    assert status == 0
    return out


@pytest.mark.parametrize("p", [0.1, 0.5, 0.03])
def test_each_entry_is_kept_with_probability_one_minus_p_and_seeding_torch_fixes_the_mask(p: float) -> None:
    scores = torch.empty(64, 128, 128, dtype=torch.bfloat16)
    torch.manual_seed(0)
    keep = softmax_dropout_keep_mask(scores, p, kernel="native")
    kept = keep.float().mean().item()
    assert abs(kept - (1 - p)) < 6 * (p * (1 - p) / keep.numel()) ** 0.5
    assert not torch.equal(keep[0], keep[1]) and not torch.equal(keep[:, 0], keep[:, 1])
    # neighbouring entries are independent: P(both kept) = (1 - p)^2
    both = (keep[..., 1:] & keep[..., :-1]).float().mean().item()
    assert abs(both - (1 - p) ** 2) < 6 * ((1 - p) ** 2 * (1 - (1 - p) ** 2) / keep[..., 1:].numel()) ** 0.5
    torch.manual_seed(0)
    assert torch.equal(softmax_dropout_keep_mask(scores, p, kernel="native"), keep)
    assert not torch.equal(softmax_dropout_keep_mask(scores, p, kernel="native"), keep)  # the stream moved on


@pytest.mark.parametrize("cols", [1, 7, 16, 33, 256])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_forward_is_softmax_times_the_mask_for_any_row_length(cols: int, dtype: torch.dtype) -> None:
    library = native.softmax_dropout_library()
    scores = (torch.randn(5, 3, cols) * 4).to(dtype)
    scores[0, 0, : cols // 2] = float("-inf")  # masked keys
    weights, dropped = _forward(library, scores, 0.2, seed=1234, threads=2, scale=0.5)
    keep = torch.empty(scores.numel(), dtype=torch.uint8)
    library.cct_softmax_dropout_keep(keep.data_ptr(), keep.numel(), 1234, round(0.2 * 2**32))
    expected = (scores.float() * 0.5).softmax(-1)
    tolerance = dict(atol=1e-6, rtol=1e-5) if dtype == torch.float32 else dict(atol=1e-3, rtol=8e-3)
    torch.testing.assert_close(weights.float(), expected, **tolerance)
    torch.testing.assert_close(dropped.float(), expected * keep.view(scores.shape) / 0.8, **tolerance)
    assert (weights[0, 0, : cols // 2] == 0).all()  # exactly zero where the score is -inf


def test_the_result_does_not_depend_on_the_number_of_threads() -> None:
    library = native.softmax_dropout_library()
    scores = torch.randn(37, 64, dtype=torch.bfloat16)
    grad = torch.randn(37, 64, dtype=torch.bfloat16)
    one = _forward(library, scores, 0.1, seed=99, threads=1)
    many = _forward(library, scores, 0.1, seed=99, threads=5)
    assert torch.equal(one[0], many[0]) and torch.equal(one[1], many[1])
    assert torch.equal(_backward(library, grad, one[0], 0.1, 99, 1), _backward(library, grad, one[0], 0.1, 99, 3))


def _keep(library, count: int, seed: int, p: float) -> torch.Tensor:
    keep = torch.empty(count, dtype=torch.uint8)
    library.cct_softmax_dropout_keep(keep.data_ptr(), count, seed, round(p * 2**32))
    return keep.bool()


def test_the_default_build_runs_the_vector_rows_where_the_cpu_has_avx512_bf16() -> None:
    flags = Path("/proc/cpuinfo").read_text().split() if Path("/proc/cpuinfo").exists() else []
    has_them = all(flag in flags for flag in ("avx512f", "avx512bw", "avx512vl", "avx512_bf16"))
    assert native.softmax_dropout_library().cct_softmax_dropout_vector_rows() == int(has_them)


@pytest.mark.skipif(platform.machine() != "x86_64", reason="the AVX-512 rows exist on x86-64 only")
@pytest.mark.parametrize("cols", [5, 16, 45])
def test_avx512_rows_and_portable_rows_agree(cols: int, tmp_path: Path) -> None:
    """On a CPU with AVX-512 BF16 the default build runs the vector rows; an x86-64-v3 build runs the portable
    ones. Both must draw the mask of cct_softmax_dropout_keep and agree to bf16 rounding, forward and
    backward, with masked (-inf) scores and a scale."""
    default = native.softmax_dropout_library()
    if not default.cct_softmax_dropout_vector_rows():
        pytest.skip("this CPU has no AVX-512 BF16: the default build runs the portable rows too")
    portable_flags = tuple("-march=x86-64-v3" if flag == "-march=native" else flag for flag in native.FLAGS)
    portable = native.build_library(tmp_path, flags=portable_flags)
    assert portable.cct_softmax_dropout_vector_rows() == 0
    scores = (torch.randn(9, 4, cols) * 3).to(torch.bfloat16)
    scores[:, 0, cols // 2 :] = float("-inf")
    grad = torch.randn(9, 4, cols).to(torch.bfloat16)
    keep = _keep(default, scores.numel(), 7, 0.3).view(scores.shape)
    for library in (default, portable):
        weights, dropped = _forward(library, scores, 0.3, seed=7, threads=2, scale=0.6)
        assert torch.equal(dropped != 0, keep & (weights != 0))
        expected = (scores.float() * 0.6).softmax(-1)
        torch.testing.assert_close(weights.float(), expected, atol=1e-3, rtol=8e-3)
        torch.testing.assert_close(dropped.float(), expected * keep / 0.7, atol=1e-3, rtol=8e-3)
        reference_scores = scores.float().requires_grad_(True)
        ((reference_scores * 0.6).softmax(-1) * keep / 0.7).backward(grad.float())
        out = torch.empty_like(weights)
        assert library.cct_softmax_dropout_backward(
            grad.data_ptr(), weights.data_ptr(), out.data_ptr(), weights.numel() // cols, cols, 7,
            round(0.3 * 2**32), 0.6, 1 / 0.7, 1, 2) == 0
        torch.testing.assert_close(out.float(), reference_scores.grad, atol=2e-2, rtol=2e-2)


def test_fewer_rows_than_threads_and_no_rows_at_all() -> None:
    library = native.softmax_dropout_library()
    scores = torch.randn(3, 20)
    alone = _forward(library, scores, 0.2, seed=5, threads=1)
    crowded = _forward(library, scores, 0.2, seed=5, threads=8)
    assert torch.equal(alone[0], crowded[0]) and torch.equal(alone[1], crowded[1])
    empty = torch.empty(0, 20)
    assert library.cct_softmax_dropout_forward(empty.data_ptr(), empty.data_ptr(), empty.data_ptr(), 0, 20, 5,
                                               0, 1.0, 1.0, 0, 4) == 0


def test_the_native_backward_refuses_a_double_backward() -> None:
    scores = torch.randn(4, 6, requires_grad=True)
    out = softmax_dropout(scores, 0.1, kernel="native")
    (grad,) = torch.autograd.grad(out.square().sum(), scores, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable|does not require grad"):
        grad.sum().backward()


def test_without_a_compiler_training_falls_back_to_torch(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("CCT_CACHE", str(tmp_path / "cache"))
    with pytest.raises(OSError):
        native.build_library(tmp_path / "cache")
    native.softmax_dropout_library.cache_clear()
    try:
        with caplog.at_level(logging.WARNING):
            assert native.softmax_dropout_library() is None
        assert "torch's operators" in caplog.text
        scores = torch.randn(2, 8, requires_grad=True)
        out = softmax_dropout(scores, 0.5)  # auto: torch's operators
        assert out.shape == (2, 8) and ((out == 0) | (out > 0)).all()
        with pytest.raises(ConfigError, match="C compiler"):
            softmax_dropout(scores, 0.5, kernel="native")
    finally:
        native.softmax_dropout_library.cache_clear()


def test_cct_native_0_turns_it_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CCT_NATIVE", "0")
    native.softmax_dropout_library.cache_clear()
    try:
        assert native.softmax_dropout_library() is None
    finally:
        native.softmax_dropout_library.cache_clear()


def test_a_broken_compiler_run_leaves_no_library_behind(tmp_path: Path) -> None:
    if shutil.which("false") is None:
        pytest.skip("no `false` command")
    with pytest.raises(subprocess.CalledProcessError):
        native.build_library(tmp_path, compiler=shutil.which("false"))
    assert list(tmp_path.glob("*.so")) == []


def test_bad_probability_and_kernel_are_refused() -> None:
    scores = torch.randn(2, 4)
    with pytest.raises(ConfigError, match=r"\[0, 1\)"):
        softmax_dropout(scores, 1.0)
    with pytest.raises(ConfigError, match="kernel must be one of"):
        softmax_dropout(scores, 0.1, kernel="cuda")
