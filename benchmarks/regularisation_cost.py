"""What the model's own regularisation costs in a training step: attention dropout and stochastic depth on and
off, timed interleaved in one process (forward, backward and fused AdamW under the fast path's bf16 autocast,
on a random batch; no data augmentation).

    python benchmarks/regularisation_cost.py --model cct_7_3x1_32 --batch-size 128

On a CPU, attention dropout draws a random mask as large as the attention matrices (batch x heads x tokens^2
per block), which no eager kernel fuses with the softmax: this shows how much of a step that is.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from compact_transformers import create_model
from compact_transformers.training.runtime import autocast_dtype, prepare_input, prepare_model, tune_cpu

VARIANTS = {
    "as configured": {},
    "no attention dropout": {"attn_dropout": 0.0},
    "no stochastic depth": {"drop_path": 0.0},
    "neither": {"attn_dropout": 0.0, "drop_path": 0.0},
}


def make_step(model_name: str, images: torch.Tensor, labels: torch.Tensor, **overrides: float) -> Callable[[], None]:
    device = images.device
    model = prepare_model(create_model(model_name, **overrides), device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-4, fused=True)
    images = prepare_input(images)
    amp_dtype = autocast_dtype(device, amp=True)

    def step() -> None:
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="cct_7_3x1_32")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    tune_cpu()
    torch.manual_seed(0)
    config = create_model(args.model).config
    height, width = (config.img_size, config.img_size) if isinstance(config.img_size, int) else config.img_size
    images = torch.randn(args.batch_size, config.in_chans, height, width)
    labels = torch.randint(0, config.num_classes, (args.batch_size,))
    steps = {name: make_step(args.model, images, labels, **overrides) for name, overrides in VARIANTS.items()}
    seconds: dict[str, list[float]] = {name: [] for name in steps}
    for step in steps.values():  # warm-up
        step()
        step()
    for _ in range(args.rounds):
        for name, step in steps.items():
            for _ in range(2):
                start = time.perf_counter()
                step()
                seconds[name].append(time.perf_counter() - start)
    base = statistics.median(seconds["as configured"])
    print(f"{args.model} batch {args.batch_size}, training step (attention dropout {config.attn_dropout}, "
          f"stochastic depth {config.drop_path}); torch {torch.__version__}, {torch.get_num_threads()} threads")
    for name, values in seconds.items():
        median = statistics.median(values)
        print(f"  {name:22s} {median * 1e3:8.0f} ms  {args.batch_size / median:8.1f} img/s  "
              f"{(base - median) / base:6.1%} of the step saved")


if __name__ == "__main__":
    main()
