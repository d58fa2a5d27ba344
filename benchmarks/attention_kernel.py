"""Attention's core in a training step (q k^T, softmax, dropout, times v; forward and backward) for one
encoder layer: the native fused kernel (`native_attention`, the default on CPUs with AVX-512 BF16) on each engine
this CPU has (AVX-512 BF16 dot products; AMX tiles) against torch's matmuls around the native softmax-dropout
kernel (what runs without AVX-512 BF16, or with CCT_NATIVE_ATTENTION=0).

    python benchmarks/attention_kernel.py --batch-size 128 --tokens 256,64,49
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from functools import partial

import torch

from compact_transformers.models import native
from compact_transformers.models.layers import native_attention, native_attention_available, softmax_dropout
from compact_transformers.training.runtime import tune_cpu


def median_ms(run: Callable[[], tuple[float, float]], repeats: int) -> tuple[float, float]:
    """Median forward and backward milliseconds of ``run`` over ``repeats`` calls (after one warm-up)."""
    run()
    times = sorted(run() for _ in range(repeats))
    forward = sorted(t[0] for t in times)[repeats // 2]
    backward = sorted(t[1] for t in times)[repeats // 2]
    return forward * 1e3, backward * 1e3


def _on_engine(engine: int, qkv: torch.Tensor, heads: int, p: float, scale: float) -> torch.Tensor:
    """native_attention with its matmuls on ``engine`` (forward; the backward keeps the forward's engine)."""
    chosen = native.attention_engine
    native.attention_engine = lambda: engine
    try:
        return native_attention(qkv, heads, p, scale)
    finally:
        native.attention_engine = chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--tokens", default="256,64,49", help="token counts (CCT-7/3x1 at 32x32: 256; 3x2: 64)")
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    tune_cpu()  # as cct train does
    library = native.softmax_dropout_library()
    engines_here = int(library.cct_attention_available()) if library is not None else 0
    heads, head_dim, p = args.heads, args.head_dim, args.dropout
    dim, scale = heads * head_dim, head_dim**-0.5
    print(f"batch {args.batch_size}, {heads} heads of {head_dim}, dropout {p}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}")
    for tokens in (int(value) for value in args.tokens.split(",")):
        qkv = torch.randn(args.batch_size, tokens, 3 * dim).to(torch.bfloat16).requires_grad_(True)
        grad = torch.randn(args.batch_size, tokens, dim).to(torch.bfloat16)

        def torch_matmuls() -> torch.Tensor:
            q, k, v = qkv.reshape(args.batch_size, tokens, 3, heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
            weights = softmax_dropout(q @ k.transpose(-2, -1), p, scale=scale)
            return (weights @ v).transpose(1, 2).reshape(args.batch_size, tokens, dim)

        paths = {"torch matmuls + softmax-dropout kernel": torch_matmuls}
        if native_attention_available(qkv, heads):
            for name, engine in native.ATTENTION_ENGINES.items():
                if engines_here & engine:
                    paths[f"native attention ({name})"] = partial(_on_engine, engine, qkv, heads, p, scale)
        for name, forward in paths.items():
            def run() -> tuple[float, float]:
                start = time.perf_counter()
                out = forward()
                middle = time.perf_counter()
                out.backward(grad)
                end = time.perf_counter()
                qkv.grad = None
                return middle - start, end - middle

            forward_ms, backward_ms = median_ms(run, args.repeats)
            print(f"  {tokens:4d} tokens  {name:40s} forward {forward_ms:6.1f} ms  backward {backward_ms:6.1f} ms")
        if len(paths) == 1:
            print("  (no native attention here: it needs AVX-512 BF16 and a C compiler)")


if __name__ == "__main__":
    main()
