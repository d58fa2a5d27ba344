"""One attention block's softmax + dropout, forward and backward: the native kernel as built for this CPU, the
same source built for older x86-64 levels (what a CPU without AVX-512 BF16 runs), and torch's operators.

    python benchmarks/softmax_dropout_kernel.py --shape 128,4,256,256

The default shape is CCT-7/3x1's at batch 128 (batch x heads x tokens x tokens). Kernels are called directly
(no autograd), on the threads torch uses, after the malloc tuning `cct train` applies.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from compact_transformers.models import native
from compact_transformers.models.layers import softmax_dropout
from compact_transformers.training.runtime import tune_cpu

P, SCALE = 0.1, 0.125


def median_ms(run: Callable[[], object], repeats: int) -> float:
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default="128,4,256,256")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    tune_cpu()  # as cct train does: freed memory stays in the heap
    shape = tuple(int(size) for size in args.shape.split(","))
    libraries = {"native": native.softmax_dropout_library()}
    if libraries["native"] is None:
        raise SystemExit("the native kernel could not be built here (see the warning above)")
    if platform.machine() == "x86_64":
        scratch = Path(tempfile.mkdtemp())
        for march in ("x86-64-v4", "x86-64-v3"):  # AVX-512 without BF16; AVX2
            flags = tuple(f"-march={march}" if flag == "-march=native" else flag for flag in native.FLAGS)
            libraries[march] = native.build_library(scratch, flags=flags)
    threads = torch.get_num_threads()
    rows, cols = torch.Size(shape).numel() // shape[-1], shape[-1]
    threshold = round(P * 2**32)
    print(f"shape {shape}, p {P}, {threads} threads, torch {torch.__version__}")
    for dtype in (torch.bfloat16, torch.float32):
        scores = torch.randn(shape).to(dtype)
        weights, dropped, grad, grad_scores = (torch.empty_like(scores) for _ in range(4))
        grad.normal_()
        is_bf16 = int(dtype == torch.bfloat16)
        for name, library in libraries.items():
            forward = median_ms(lambda: library.cct_softmax_dropout_forward(
                scores.data_ptr(), weights.data_ptr(), dropped.data_ptr(), rows, cols, 1, threshold, SCALE,
                1 / (1 - P), is_bf16, threads), args.repeats)
            backward = median_ms(lambda: library.cct_softmax_dropout_backward(
                grad.data_ptr(), weights.data_ptr(), grad_scores.data_ptr(), rows, cols, 1, threshold, SCALE,
                1 / (1 - P), is_bf16, threads), args.repeats)
            print(f"  {str(dtype):15s} {name:12s} forward {forward:7.1f} ms  backward {backward:7.1f} ms")
        leaf = scores.clone().requires_grad_(True)
        forward = median_ms(lambda: softmax_dropout(scores, P, scale=SCALE, kernel="torch"), args.repeats)
        both = median_ms(lambda: softmax_dropout(leaf, P, scale=SCALE, kernel="torch").backward(grad), args.repeats)
        print(f"  {str(dtype):15s} {'torch ops':12s} forward {forward:7.1f} ms  backward {both - forward:7.1f} ms")


if __name__ == "__main__":
    main()
