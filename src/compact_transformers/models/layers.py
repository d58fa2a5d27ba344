"""Transformer building blocks shared by every Compact Transformer family.

Module and parameter names follow the authors' reference code so that their released state dicts load
without renaming (``self_attn.qkv``, ``pre_norm``, ``norm1``, ``linear1`` ...).
"""

from __future__ import annotations

import math
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from ..errors import ConfigError
from . import native
from .config import POSITIONAL_EMBEDDINGS, ModelConfig

ATTENTION_IMPLS = ("sdpa", "explicit", "auto")

SizeT = TypeVar("SizeT", int, torch.Tensor)


class Attention(nn.Module):
    """Multi-head self-attention: qkv Linear without bias (rows q, k, v), proj Linear with bias.

    ``impl`` selects the kernel: ``"sdpa"`` (``F.scaled_dot_product_attention``), ``"explicit"``
    (softmax(q k^T) v written out, the reference form) or ``"auto"`` (SDPA, except while training on a CPU:
    there the SDPA backward is slower than the explicit one; its forward is faster and uses memory linear in
    the tokens, and on a GPU its fused kernels train CCT-7/3x1 1.45x faster at batch 512 on an H200).
    Training on a CPU with attention dropout, the explicit path scales, normalises and drops in one
    :func:`softmax_dropout` (the same distribution as ``nn.Dropout``), in C where a compiler is at hand; with
    ``"auto"``, bf16 activations (autocast) and a CPU with AVX-512 BF16 (AMD Zen 4+, Intel with AMX), the whole
    core (q k^T, softmax, dropout, times v) runs in :func:`native_attention` instead, in training (where it drops
    the same entries for the same seed) and in evaluation, where it pays (:func:`.native.attention_pays`: with
    AMX always, on AVX-512 BF16 alone from ``VECTOR_MIN_TOKENS`` tokens).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        attn_dropout: float = 0.1,
        proj_dropout: float = 0.0,
        impl: str = "auto",
    ) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ConfigError(f"embedding dim {dim} must be divisible by num_heads {num_heads}")
        if impl not in ATTENTION_IMPLS:
            raise ConfigError(f"attention impl must be one of {ATTENTION_IMPLS}, got {impl!r}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.attn_dropout = attn_dropout
        self.impl = impl
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.attn_drop = nn.Dropout(attn_dropout)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_dropout)

    def forward(
        self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, need_weights: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """``attn_mask``: optional bool (B, N) with True for tokens that may be attended to. ``need_weights``:
        also return the attention probabilities (B, heads, N, N), before dropout; they come from the explicit
        kernel (SDPA does not expose them), whatever ``impl`` says."""
        batch, tokens, dim = x.shape
        qkv = self.qkv(x)
        if (self.impl == "auto" and attn_mask is None and not need_weights
                and native_attention_available(qkv, self.num_heads)
                and native.attention_pays(tokens)):  # bf16 on a CPU with AVX-512 BF16, long enough sequences
            out = native_attention(qkv, self.num_heads, self.attn_dropout if self.training else 0.0, self.scale)
            return self.proj_drop(self.proj(out))
        qkv = qkv.reshape(batch, tokens, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        key_mask = None if attn_mask is None else attn_mask[:, None, None, :]
        use_sdpa = self.impl == "sdpa" or (self.impl == "auto" and not (self.training and x.device.type == "cpu"))
        weights = None
        if use_sdpa and not need_weights:
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=key_mask, dropout_p=self.attn_dropout if self.training else 0.0
            )
        else:
            if self.training and self.attn_dropout > 0 and x.device.type == "cpu" and not need_weights:
                scores = q @ k.transpose(-2, -1)  # the kernel scales them
                if key_mask is not None:
                    scores = scores.masked_fill(~key_mask, float("-inf"))
                with torch.autocast("cpu", enabled=False):  # softmax in the scores' dtype (bf16 under autocast)
                    dropped = softmax_dropout(scores, self.attn_dropout, scale=self.scale)
                out = dropped @ v
            else:
                scores = (q * self.scale) @ k.transpose(-2, -1)
                if key_mask is not None:
                    scores = scores.masked_fill(~key_mask, float("-inf"))
                weights = scores.softmax(dim=-1)
                out = self.attn_drop(weights) @ v
        out = out.transpose(1, 2).reshape(batch, tokens, dim)
        out = self.proj_drop(self.proj(out))
        return (out, weights) if need_weights else out


def dropout_keep_mask(shape: tuple[int, ...], p: float, *, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A dropout mask of ``shape`` in ``dtype``: 1 with probability ``1 - p`` (keep), else 0.

    Each element gets 16 bits of torch's random stream (so ``p`` is exact to 1/65536, and seeding torch
    seeds it); drawing 64-bit words and comparing them as int16 is 3-5x faster on a CPU than ``bernoulli_``,
    which for the attention matrix of CCT-7/3x1 took a third of a training step.
    """
    count = math.prod(shape)
    words = torch.randint(-(2**63), 2**63 - 1, ((count + 3) // 4,), dtype=torch.int64, device=device)
    threshold = round(p * 65536) - 32768  # an int16 is uniform on [-32768, 32767]
    mask = torch.empty(shape, dtype=dtype, device=device)
    return torch.ge(words.view(torch.int16)[:count].view(shape), threshold, out=mask)


class _SoftmaxDropout(torch.autograd.Function):
    """dropout(softmax(scale * scores), p) with torch's operators: the mask from :func:`dropout_keep_mask`, the
    softmax and the mask saved in the scores' dtype and applied in its own backward (instead of the fp32 copies
    and float mask that autocast and ``F.dropout`` make)."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, scores: torch.Tensor, p: float,
                scale: float) -> torch.Tensor:
        weights = torch.softmax(scores * scale if scale != 1.0 else scores, dim=-1)  # fp32 accumulation inside
        keep = dropout_keep_mask(tuple(weights.shape), p, dtype=weights.dtype, device=weights.device)
        ctx.save_for_backward(weights, keep)
        ctx.p, ctx.scale = p, scale
        return torch.mul(weights, keep).mul_(1.0 / (1.0 - p))

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx,
                 grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        weights, keep = ctx.saved_tensors
        grad_weights = torch.mul(grad, keep).mul_(1.0 / (1.0 - ctx.p))
        grad_scores = torch._softmax_backward_data(grad_weights, weights, -1, weights.dtype)
        return (grad_scores.mul_(ctx.scale) if ctx.scale != 1.0 else grad_scores), None, None


def _native_seed_and_threshold(p: float) -> tuple[int, int]:
    """The native kernel's draw: a 64-bit seed from torch's generator, and p as a 32-bit threshold."""
    seed = int(torch.randint(-(2**63), 2**63 - 1, (1,), dtype=torch.int64)) % 2**64
    return seed, min(round(p * 2**32), 2**32 - 1)


class _NativeSoftmaxDropout(torch.autograd.Function):
    """The same function in one pass of the C kernel of :mod:`.native`, forward and backward: the mask is a hash
    of a seed drawn from torch's generator and the entry's index, recomputed by the backward, not stored."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, scores: torch.Tensor, p: float,
                scale: float) -> torch.Tensor:
        scores = scores.contiguous()
        weights, dropped = torch.empty_like(scores), torch.empty_like(scores)
        seed, threshold = _native_seed_and_threshold(p)
        cols = scores.shape[-1]
        status = native.softmax_dropout_library().cct_softmax_dropout_forward(
            scores.data_ptr(), weights.data_ptr(), dropped.data_ptr(), scores.numel() // cols, cols, seed, threshold,
            scale, 1.0 / (1.0 - p), int(scores.dtype == torch.bfloat16), torch.get_num_threads())
        _check_native_status(status, "softmax-dropout")
        ctx.save_for_backward(weights)
        ctx.seed, ctx.threshold, ctx.p, ctx.scale = seed, threshold, p, scale
        return dropped

    @staticmethod
    @once_differentiable  # the C backward builds no graph: a double backward must fail, not return zeros
    def backward(ctx: torch.autograd.function.FunctionCtx,
                 grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (weights,) = ctx.saved_tensors
        grad = grad.to(weights.dtype).contiguous()
        grad_scores = torch.empty_like(weights)
        cols = weights.shape[-1]
        status = native.softmax_dropout_library().cct_softmax_dropout_backward(
            grad.data_ptr(), weights.data_ptr(), grad_scores.data_ptr(), weights.numel() // cols, cols, ctx.seed,
            ctx.threshold, ctx.scale, 1.0 / (1.0 - ctx.p), int(weights.dtype == torch.bfloat16),
            torch.get_num_threads())
        _check_native_status(status, "softmax-dropout")
        return grad_scores, None, None


class _NativeAttention(torch.autograd.Function):
    """``dropout(softmax(scale * q k^T)) v`` of every head, straight from the qkv projection's (B, N, 3·D) bf16
    output to the (B, N, D) input of the output projection, in the C kernel of :mod:`.native` on CPUs with
    AVX-512 BF16 (its matmuls on AMX tiles where there are some): each (image, head) is computed in the thread's
    cache, so no N x N matrix is written to memory; the backward recomputes the scores from q and k and reads the
    mask from 1 bit per entry that the forward saved.
    The dropout mask is the one ``softmax_dropout`` draws for these scores, for the same seed."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, qkv: torch.Tensor, heads: int, p: float,
                scale: float) -> torch.Tensor:
        qkv = qkv.contiguous()
        batch, tokens, width = qkv.shape
        dim = width // 3
        out = qkv.new_empty(batch, tokens, dim)
        stats = torch.empty(2, batch, heads, tokens, dtype=torch.float32)  # each row's max and 1/sum
        keep_bits = torch.empty(batch, heads, tokens, (tokens + 15) // 16, dtype=torch.int16)  # the mask, 1/16 byte
        seed, threshold = _native_seed_and_threshold(p) if p > 0 else (0, 0)  # p = 0 draws nothing, as nn.Dropout
        engine = native.attention_engine()
        status = native.softmax_dropout_library().cct_attention_forward(
            qkv.data_ptr(), out.data_ptr(), stats[0].data_ptr(), stats[1].data_ptr(), keep_bits.data_ptr(), batch,
            tokens, heads, dim // heads, seed, threshold, scale, 1.0 / (1.0 - p), engine, torch.get_num_threads())
        _check_native_status(status, "attention")
        ctx.save_for_backward(qkv, stats, keep_bits)
        ctx.heads, ctx.p, ctx.scale, ctx.engine = heads, p, scale, engine  # the same engine recomputes the scores
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: torch.autograd.function.FunctionCtx,
                 grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        qkv, stats, keep_bits = ctx.saved_tensors
        grad = grad.to(qkv.dtype).contiguous()
        grad_qkv = torch.empty_like(qkv)
        batch, tokens, width = qkv.shape
        status = native.softmax_dropout_library().cct_attention_backward(
            qkv.data_ptr(), grad.data_ptr(), stats[0].data_ptr(), stats[1].data_ptr(), keep_bits.data_ptr(),
            grad_qkv.data_ptr(), batch, tokens, ctx.heads, width // 3 // ctx.heads, ctx.scale, 1.0 / (1.0 - ctx.p),
            ctx.engine, torch.get_num_threads())
        _check_native_status(status, "attention")
        return grad_qkv, None, None, None


class _NativeAddNorm(torch.autograd.Function):
    """``LayerNorm(x + scale * branch)`` in one pass of the C kernel of :mod:`.native`: x fp32, branch bf16 (or
    None), scale one factor per sample (or None); returns the result in bf16, and in fp32 too with
    ``keep_fp32``. The backward takes either gradient or both."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor, branch: torch.Tensor | None,
                branch_scale: torch.Tensor | None, weight: torch.Tensor, bias: torch.Tensor, eps: float,
                keep_fp32: bool) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        ctx.set_materialize_grads(False)  # an output nothing used gets None, not a tensor of zeros
        x = x.contiguous()
        dim = x.shape[-1]
        rows = x.numel() // dim
        tokens = rows // x.shape[0]  # rows per sample, for the per-sample scale
        stats = torch.empty(2, rows)  # each row's mean and 1/std
        out_bf16 = torch.empty(x.shape, dtype=torch.bfloat16)
        out = torch.empty_like(x) if keep_fp32 else None
        saved = x
        if branch is not None:
            branch = branch.contiguous()
            saved = torch.empty_like(x)  # the sum, which the backward normalises again
        scale = None if branch_scale is None else branch_scale.float().contiguous()
        status = native.softmax_dropout_library().cct_add_norm_forward(
            x.data_ptr(), _pointer(branch), _pointer(scale), tokens, weight.data_ptr(), bias.data_ptr(), eps, rows, dim,
            _pointer(saved if branch is not None else None), _pointer(out), out_bf16.data_ptr(), stats[0].data_ptr(),
            stats[1].data_ptr(), torch.get_num_threads())
        _check_native_status(status, "add-norm")
        ctx.save_for_backward(saved, stats, weight, scale)
        ctx.has_branch, ctx.tokens = branch is not None, tokens
        return (out_bf16, out) if keep_fp32 else out_bf16

    @staticmethod
    @once_differentiable
    def backward(ctx: torch.autograd.function.FunctionCtx, grad_bf16: torch.Tensor | None,
                 grad: torch.Tensor | None = None) -> tuple[torch.Tensor | None, ...]:
        saved, stats, weight, scale = ctx.saved_tensors
        dim = saved.shape[-1]
        rows = saved.numel() // dim
        grad_bf16 = None if grad_bf16 is None else grad_bf16.to(torch.bfloat16).contiguous()
        grad = None if grad is None else grad.float().contiguous()
        threads = min(torch.get_num_threads(), 64)  # MAX_THREADS of the C file: one row of partial sums each
        partial = torch.zeros(2, threads, dim)
        grad_input = torch.empty_like(saved)
        grad_branch = torch.empty(saved.shape, dtype=torch.bfloat16) if ctx.has_branch else None
        status = native.softmax_dropout_library().cct_add_norm_backward(
            saved.data_ptr(), stats[0].data_ptr(), stats[1].data_ptr(), weight.data_ptr(), _pointer(grad),
            _pointer(grad_bf16), _pointer(scale), ctx.tokens, rows, dim, grad_input.data_ptr(), _pointer(grad_branch),
            partial[0].data_ptr(), partial[1].data_ptr(), threads)
        _check_native_status(status, "add-norm")
        grad_weight, grad_bias = partial.sum(1)
        return grad_input, grad_branch, None, grad_weight, grad_bias, None, None


def _pointer(tensor: torch.Tensor | None) -> int | None:
    return None if tensor is None else tensor.data_ptr()


def native_add_norm_available(x: torch.Tensor, norm: nn.LayerNorm) -> bool:
    """Whether :func:`native_add_norm` can take ``x`` for ``norm``: fp32 on a CPU inside bf16 autocast, a
    LayerNorm over the last axis with fp32 weight and bias, eager mode, the library built and
    ``CCT_NATIVE_NORM=1`` (off by default: see :func:`.native.add_norm_enabled`)."""
    return (native.add_norm_enabled()  # first: off by default, and then the one check a block pays
            and x.device.type == "cpu" and x.dtype == torch.float32 and x.dim() >= 2 and x.numel() > 0
            and torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
            and isinstance(norm, nn.LayerNorm) and len(norm.normalized_shape) == 1
            and norm.normalized_shape[0] == x.shape[-1] and norm.weight is not None and norm.bias is not None
            and norm.weight.dtype == torch.float32 and norm.bias.dtype == torch.float32
            and not torch.compiler.is_compiling())


def native_add_norm(x: torch.Tensor, branch: torch.Tensor | None, norm: nn.LayerNorm, *,
                    branch_scale: torch.Tensor | None = None,
                    keep_fp32: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """``norm(x + branch_scale * branch)`` (``norm(x)`` without a branch) in one pass, as bf16 autocast would
    feed it to the next linear: returns the bf16 result, or (bf16, fp32) with ``keep_fp32`` (the fp32 one for a
    residual stream). ``branch``: bf16, shaped as x; ``branch_scale``: one factor per sample (stochastic
    depth), shaped to broadcast. Needs :func:`native_add_norm_available`."""
    if branch is not None and (branch.shape != x.shape or branch.dtype != torch.bfloat16):
        raise ConfigError(f"native_add_norm needs a bf16 branch shaped as x {tuple(x.shape)}, got "
                          f"{branch.dtype} {tuple(branch.shape)}")
    if branch_scale is not None and (branch is None or branch_scale.numel() != x.shape[0]):
        raise ConfigError(f"branch_scale needs a branch and one factor per sample ({x.shape[0]}), got "
                          f"{branch_scale.numel()}")
    return _NativeAddNorm.apply(x, branch, branch_scale, norm.weight, norm.bias, float(norm.eps), keep_fp32)


def _check_native_status(status: int, kernel: str) -> None:
    """The C kernels' return codes: 0 done, 1 out of memory, anything else a refused input."""
    if status == 1:
        raise MemoryError(f"the native {kernel} kernel could not allocate its buffers")
    if status != 0:
        raise RuntimeError(f"the native {kernel} kernel refused its input (status {status})")


ATTENTION_MAX_TOKENS = 1024  # MAX_TOKENS of the C kernel: its per-thread buffers grow with tokens^2


def _even_heads(qkv: torch.Tensor, heads: int) -> bool:
    """qkv is (batch, tokens, 3 x heads x head_dim) with an even head_dim (the kernel moves pairs of values as
    32-bit words)."""
    width = qkv.shape[-1]
    return qkv.dim() == 3 and width % (3 * heads) == 0 and (width // (3 * heads)) % 2 == 0


def native_attention_available(qkv: torch.Tensor, heads: int) -> bool:
    """Whether :func:`native_attention` can take this qkv projection output for ``heads`` heads: bf16 on a CPU
    with AVX-512 BF16 (see :func:`.native.attention_engine`), an even head width, eager mode, at most
    ``ATTENTION_MAX_TOKENS`` tokens, and the library built (not ``CCT_NATIVE=0``)."""
    return (qkv.device.type == "cpu" and qkv.dtype == torch.bfloat16 and _even_heads(qkv, heads)
            and 0 < qkv.shape[1] <= ATTENTION_MAX_TOKENS and qkv.shape[0] > 0
            and not torch.compiler.is_compiling() and native.attention_available())


def native_attention(qkv: torch.Tensor, heads: int, p: float, scale: float) -> torch.Tensor:
    """Multi-head attention's core, ``dropout(softmax(scale * q k^T), p) v`` (kept entries scaled
    by 1/(1 - p)), from the (B, N, 3·D) output of the qkv projection to (B, N, D), heads side by side; needs
    :func:`native_attention_available`."""
    if not 0.0 <= p < 1.0:
        raise ConfigError(f"dropout probability must be in [0, 1), got {p}")
    if not _even_heads(qkv, heads):
        raise ConfigError(f"native attention needs a (batch, tokens, 3 x heads x head_dim) qkv with an even head_dim; "
                          f"got shape {tuple(qkv.shape)} for {heads} heads")
    return _NativeAttention.apply(qkv, heads, float(p), float(scale))


SOFTMAX_DROPOUT_KERNELS = ("auto", "native", "torch")


def _uses_native(scores: torch.Tensor, kernel: str) -> bool:
    if kernel not in SOFTMAX_DROPOUT_KERNELS:
        raise ConfigError(f"softmax-dropout kernel must be one of {SOFTMAX_DROPOUT_KERNELS}, got {kernel!r}")
    if kernel == "torch":
        return False
    suitable = (scores.device.type == "cpu" and scores.dtype in (torch.float32, torch.bfloat16)
                and scores.dim() > 0 and scores.numel() > 0
                and not torch.compiler.is_compiling())  # torch.compile traces torch's operators, not C calls
    available = suitable and native.softmax_dropout_library() is not None
    if kernel == "native" and not available:
        raise ConfigError(
            "the native softmax-dropout kernel needs non-empty fp32/bf16 scores on a CPU, eager mode and a C "
            f"compiler (and not CCT_NATIVE=0); got {scores.dtype} on {scores.device.type}, shape {tuple(scores.shape)}")
    return available


def softmax_dropout(scores: torch.Tensor, p: float, scale: float = 1.0, kernel: str = "auto") -> torch.Tensor:
    """``dropout(softmax(scale * scores, -1), p)`` as ``nn.Dropout`` computes it in training (kept entries
    scaled by 1/(1 - p)), in the scores' dtype, for ``0 <= p < 1``.

    ``kernel``: ``"native"`` (one C pass forward and one backward; 6x faster than ``"torch"`` for the bf16 scores
    of CCT-7/3x1 on an AMX CPU, 3x with the portable C rows), ``"torch"`` (torch's operators, the mask from
    :func:`dropout_keep_mask`) or ``"auto"`` (native for fp32/bf16 CPU scores where it can be built). Both draw
    from torch's generator, so seeding torch fixes the mask; they draw different masks.
    """
    if not 0.0 <= p < 1.0:
        raise ConfigError(f"dropout probability must be in [0, 1), got {p}")
    if _uses_native(scores, kernel):
        return _NativeSoftmaxDropout.apply(scores, p, scale)
    return _SoftmaxDropout.apply(scores, p, scale)


def softmax_dropout_keep_mask(scores: torch.Tensor, p: float, kernel: str = "auto") -> torch.Tensor:
    """The keep mask (bool, shaped like ``scores``) that ``softmax_dropout(scores, p, kernel)`` would apply if
    called now; draws the same random numbers from torch's generator (for tests and for checking the draw)."""
    if not _uses_native(scores, kernel):
        return dropout_keep_mask(tuple(scores.shape), p, dtype=torch.bool, device=scores.device)
    seed, threshold = _native_seed_and_threshold(p)
    keep = torch.empty(scores.shape, dtype=torch.uint8)
    native.softmax_dropout_library().cct_softmax_dropout_keep(keep.data_ptr(), keep.numel(), seed, threshold)
    return keep.bool()


class DropPath(nn.Module):
    """Stochastic depth: drops the whole residual branch per sample while training."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def sample_scale(self, x: torch.Tensor) -> torch.Tensor | None:
        """This call's factor per sample of ``x`` (0 or 1/keep, shaped to broadcast, in x's dtype), or None where
        nothing is dropped."""
        if self.drop_prob == 0.0 or not self.training:
            return None
        keep = 1.0 - self.drop_prob
        return x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep).div_(keep)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.sample_scale(x)
        return x if scale is None else x * scale  # one pass over x (x * mask / keep made two, forward and backward)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


class EncoderBlock(nn.Module):
    """The reference encoder block. Its order matters for the released weights:

    ``x = x + drop_path(attn(pre_norm(x)))``; ``x = norm1(x)`` (normalises the residual stream itself);
    ``x = x + drop_path(dropout(linear2(dropout(gelu(linear1(x))))))``.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, dropout: float = 0.0, attn_dropout: float = 0.1,
                 drop_path: float = 0.0, attn_impl: str = "auto") -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.pre_norm = nn.LayerNorm(dim)
        self.self_attn = Attention(
            dim, num_heads, attn_dropout=attn_dropout, proj_dropout=dropout, impl=attn_impl
        )
        self.linear1 = nn.Linear(dim, hidden)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.linear2 = nn.Linear(hidden, dim)
        self.dropout2 = nn.Dropout(dropout)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(
        self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, need_weights: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """``need_weights``: also return the attention probabilities (B, heads, N, N) (see :class:`Attention`).
        In a bf16 autocast step on a CPU with ``CCT_NATIVE_NORM=1``, both norms run in :func:`native_add_norm`
        (the same function, with the residual add and the casts to bf16 folded in)."""
        fused = native_add_norm_available(x, self.pre_norm) and native_add_norm_available(x, self.norm1)
        normed = native_add_norm(x, None, self.pre_norm) if fused else self.pre_norm(x)
        if need_weights:
            attended, weights = self.self_attn(normed, attn_mask=attn_mask, need_weights=True)
        else:
            attended = self.self_attn(normed, attn_mask=attn_mask)
        if fused and attended.dtype == torch.bfloat16:
            scale = self.drop_path.sample_scale(attended) if isinstance(self.drop_path, DropPath) else None
            hidden_input, x = native_add_norm(x, attended, self.norm1, branch_scale=scale, keep_fp32=True)
        else:
            x = self.norm1(x + self.drop_path(attended))
            hidden_input = x
        mlp = self.linear2(self.dropout1(F.gelu(self.linear1(hidden_input))))
        x = x + self.drop_path(self.dropout2(mlp))
        return (x, weights) if need_weights else x


class SeqPool(nn.Linear):
    """Sequence pooling: softmax(Linear(d->1)(x)) over tokens, then the weighted sum of the tokens.

    A Linear subclass so that its parameters keep the reference keys ``attention_pool.{weight,bias}``.
    """

    def __init__(self, dim: int) -> None:
        super().__init__(dim, 1)

    def forward(
        self, x: torch.Tensor, token_mask: torch.Tensor | None = None, need_weights: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Tokens (B, N, d) -> pooled (B, d); ``need_weights``: also the pooling weights (B, N), which sum to 1
        over the tokens (0 for masked ones)."""
        scores = super().forward(x)  # (B, N, 1)
        if token_mask is not None:
            scores = scores.masked_fill(~token_mask[..., None], float("-inf"))
        weights = scores.softmax(dim=1)
        pooled = (weights.transpose(1, 2) @ x).squeeze(1)
        return (pooled, weights.squeeze(2)) if need_weights else pooled


POOLINGS = ("seqpool", "cls")


class TransformerClassifier(nn.Module):
    """Positional embedding -> encoder blocks -> final norm -> SeqPool or class token -> ``fc``.

    A sinusoidal table is a persistent buffer (saved in the state dict under the reference key
    ``positional_emb``, never trained); a learnable one is a Parameter; ``"none"`` accepts any length.
    """

    def __init__(
        self,
        embed_dim: int,
        num_layers: int,
        num_heads: int,
        mlp_ratio: float,
        num_classes: int,
        seq_len: int,
        pooling: str = "seqpool",
        positional_embedding: str = "learnable",
        dropout: float = 0.0,
        attn_dropout: float = 0.1,
        drop_path: float = 0.1,
        attn_impl: str = "auto",
        variable_length: bool = False,
    ) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        if positional_embedding not in POSITIONAL_EMBEDDINGS:
            raise ConfigError(
                f"positional_embedding must be one of {POSITIONAL_EMBEDDINGS}, got {positional_embedding!r}"
            )
        self.embed_dim = embed_dim
        self.variable_length = variable_length  # up to seq_len tokens (text); else exactly seq_len (images)
        self.pooling = pooling
        self.positional_embedding = positional_embedding
        self.num_prefix_tokens = 1 if pooling == "cls" else 0
        self.seq_len = seq_len + self.num_prefix_tokens
        if pooling == "cls":
            self.class_emb = nn.Parameter(torch.zeros(1, 1, embed_dim))
        else:
            self.attention_pool = SeqPool(embed_dim)
        if positional_embedding == "learnable":
            self.positional_emb = nn.Parameter(torch.zeros(1, self.seq_len, embed_dim))
        elif positional_embedding == "sine":
            self.register_buffer("positional_emb", sinusoidal_table(self.seq_len, embed_dim))
        else:
            self.positional_emb = None
        self.dropout = nn.Dropout(dropout)
        # Python floats (not torch.linspace) so that the model can also be built on the meta device.
        rates = [drop_path * i / max(1, num_layers - 1) for i in range(num_layers)]
        self.blocks = nn.ModuleList(
            [
                EncoderBlock(
                    embed_dim,
                    num_heads,
                    mlp_ratio,
                    dropout=dropout,
                    attn_dropout=attn_dropout,
                    drop_path=rate,
                    attn_impl=attn_impl,
                )
                for rate in rates
            ]
        )
        self.norm = nn.LayerNorm(embed_dim)
        self.fc = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.apply(init_reference_weights)
        if positional_embedding == "learnable":
            nn.init.trunc_normal_(self.positional_emb, std=0.2)

    @classmethod
    def from_config(
        cls, config: ModelConfig, *, seq_len: int, pooling: str, embed_dim: int | None = None,
        variable_length: bool = False,
    ) -> TransformerClassifier:
        """The encoder and head that a vision or text model config describes, for ``seq_len`` tokens of
        width ``embed_dim`` (default ``config.embed_dim``); ``variable_length``: also fewer tokens."""
        return cls(
            embed_dim=config.embed_dim if embed_dim is None else embed_dim, num_layers=config.num_layers,
            num_heads=config.num_heads, mlp_ratio=config.mlp_ratio, num_classes=config.num_classes, seq_len=seq_len,
            pooling=pooling, positional_embedding=config.positional_embedding, dropout=config.dropout,
            attn_dropout=config.attn_dropout, drop_path=config.drop_path, attn_impl=config.attn_impl,
            variable_length=variable_length,
        )  # fmt: skip

    def forward_features(self, x: torch.Tensor, token_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Tokens (B, N, d) -> pooled features (B, d). ``token_mask``: bool (B, N), True = real token."""
        return self._forward_features(x, token_mask, need_weights=False)[0]

    def forward_features_and_token_weights(
        self, x: torch.Tensor, token_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Pooled features (B, d) and what each input token weighs in them (B, N), from the same forward pass.

        SeqPool: its softmax weights, exactly the coefficients of the pooled sum. Class token: its attention
        to the N tokens in the last block, averaged over heads, without its attention to itself and
        renormalised. Either way each row sums to 1 and masked tokens weigh 0. The weights are float32,
        renormalised there when they were computed in lower precision (autocast).
        """
        features, weights = self._forward_features(x, token_mask, need_weights=True)
        weights = weights.float()
        return features, weights / weights.sum(dim=1, keepdim=True)

    def _forward_features(
        self, x: torch.Tensor, token_mask: torch.Tensor | None, need_weights: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.pooling == "cls":
            x = torch.cat([self.class_emb.expand(x.shape[0], -1, -1), x], dim=1)
            if token_mask is not None:
                token_mask = torch.cat([token_mask.new_ones(x.shape[0], 1), token_mask], dim=1)
        if self.positional_emb is not None:
            if self.variable_length and x.shape[1] <= self.seq_len:
                # Fewer tokens than the table: the same as padding to seq_len and masking the padding.
                x = x + self.positional_emb[:, : x.shape[1]]
            elif x.shape[1] != self.seq_len:
                raise ValueError(
                    f"got {x.shape[1] - self.num_prefix_tokens} tokens, but the {self.positional_embedding} "
                    f"positional embedding was built for {self.seq_len - self.num_prefix_tokens}: build the "
                    "model for this input size (img_size=...) or resize the embedding"
                )
            else:
                x = x + self.positional_emb
        x = self.dropout(x)
        class_attention = None
        for index, block in enumerate(self.blocks):
            if need_weights and self.pooling == "cls" and index == len(self.blocks) - 1:
                x, attention = block(x, attn_mask=token_mask, need_weights=True)
                class_attention = attention[:, :, 0, self.num_prefix_tokens :].float().mean(dim=1)
            else:
                x = block(x, attn_mask=token_mask)
        x = self.norm(x)
        if self.pooling == "seqpool":
            if need_weights:
                return self.attention_pool(x, token_mask=token_mask, need_weights=True)
            return self.attention_pool(x, token_mask=token_mask), None
        return x[:, 0], class_attention

    def forward(self, x: torch.Tensor, token_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.fc(self.forward_features(x, token_mask=token_mask))


def sinusoidal_table(num_positions: int, dim: int) -> torch.Tensor:
    """The reference's 1-D sin/cos table over token positions, shape (1, num_positions, dim)."""
    position = torch.arange(num_positions, dtype=torch.float64)[:, None]
    pair_index = torch.div(torch.arange(dim), 2, rounding_mode="floor").to(torch.float64)
    angle = position / torch.pow(10000.0, 2 * pair_index / dim)
    table = angle.clone()
    table[:, 0::2] = torch.sin(angle[:, 0::2])
    table[:, 1::2] = torch.cos(angle[:, 1::2])
    return table.to(torch.float32)[None]


def resize_positional_embedding(
    embedding: torch.Tensor,
    old_grid: tuple[int, int],
    new_grid: tuple[int, int],
    num_prefix_tokens: int = 0,
) -> torch.Tensor:
    """Bilinearly resize a learnable (1, prefix + H*W, d) embedding to a new token grid (H', W')."""
    prefix, grid = embedding[:, :num_prefix_tokens], embedding[:, num_prefix_tokens:]
    old_h, old_w = old_grid
    if grid.shape[1] != old_h * old_w:
        raise ValueError(
            f"positional embedding has {grid.shape[1]} grid tokens, expected {old_h}x{old_w}={old_h * old_w}"
        )
    dim = grid.shape[-1]
    grid = grid.reshape(1, old_h, old_w, dim).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=new_grid, mode="bilinear", align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], dim).to(embedding.dtype)
    return torch.cat([prefix, grid], dim=1)


def init_reference_weights(module: nn.Module) -> None:
    """The reference initialisation: trunc-normal(.02) Linear, LayerNorm (1, 0), Kaiming-normal convs.

    Every model applies it to its tokenizer and its transformer (``module.apply(init_reference_weights)``).
    """
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Conv2d):
        nn.init.kaiming_normal_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def conv_output_size(size: SizeT, kernel: int, stride: int, padding: int) -> SizeT:
    """Output length of a convolution or pooling along one axis, for an int or an integer tensor of lengths."""
    return (size + 2 * padding - kernel) // stride + 1
