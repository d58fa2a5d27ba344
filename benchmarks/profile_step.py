"""Where the time of one training step goes: torch.profiler over the step `cct bench` times (`cct train`'s own
step for the ``fast`` variant), the top operators by device time (self time on a CPU).

    python benchmarks/profile_step.py --model cct_7_3x1_32:32x32x3 --batch-size 512 --variant fast+compile \
        --device cuda --output profile.txt
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from compact_transformers.benchmark import _amp_dtype, build_step, parse_model_spec, resolve_variant
from compact_transformers.training.runtime import tune_cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="cct_7_3x1_32:32x32x3", help="MODEL:HxWxC as for `cct bench --models`")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--variant", default="fast", help="a `cct bench` variant, e.g. fast, fast+compile")
    parser.add_argument("--mode", default="train", choices=("train", "infer"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp16", "fp32"))
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rows", type=int, default=30)
    parser.add_argument("--output", type=Path, help="also write the report here")
    args = parser.parse_args()

    tune_cpu()  # as `cct train` and `cct bench` do: without it the profile is of page faults
    device = torch.device(args.device)
    spec, variant = parse_model_spec(args.model), resolve_variant(args.variant)
    step = build_step(spec, variant, args.mode, args.batch_size, device, _amp_dtype(args.precision, device))
    for _ in range(args.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = (time.perf_counter() - start) / args.steps
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(args.steps):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=sort, row_limit=args.rows, max_name_column_width=70)
    report = (f"{args.model} {args.variant} {args.mode} batch {args.batch_size} on {device}: "
              f"{seconds * 1e3:.2f} ms/step, {args.batch_size / seconds:,.0f} img/s (unprofiled, {args.steps} steps)\n"
              f"{table}")
    print(report)
    if args.output:
        args.output.write_text(report)


if __name__ == "__main__":
    main()
