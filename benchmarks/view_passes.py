"""What stacking the test-time views into shared forward passes saves: the time of one batch's six views
(`cct predict`'s path for a model of the small recipe: mirror image and shifted views) with the views stacked
into passes of at most `augment.STACK_VIEWS_UP_TO` images (the default) against one pass per view.

    python benchmarks/view_passes.py                                   # CCT-2/3x2 and CCT-4/3x2, 28x28x1
    python benchmarks/view_passes.py --batch-sizes 1,10,20,32 --json out.json

Untrained weights (the time does not depend on them), bf16 autocast where `cct predict` uses it, the two ways
timed interleaved by `cct bench`'s `measure_interleaved` (one call each in turn); prints the median ms per batch
of each and their ratio.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable

import torch

from compact_transformers import augment, create_model
from compact_transformers.benchmark import measure_interleaved
from compact_transformers.training.runtime import autocast_dtype, prepare_model, select_device, tune_cpu


def views_step(model: torch.nn.Module, batch: torch.Tensor, amp: torch.dtype | None,
               stack_up_to: int) -> Callable[[], None]:
    """One batch's six views through ``model``, stacked into passes of at most ``stack_up_to`` images."""

    def step() -> None:
        augment.STACK_VIEWS_UP_TO = stack_up_to
        with torch.no_grad(), torch.autocast(batch.device.type, dtype=amp, enabled=amp is not None):
            augment.tta_logits(model, batch, flip_tta=True, shift_tta=1)

    return step


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="cct_2_3x2_32,cct_4_3x2_32")
    parser.add_argument("--batch-sizes", default="1,10,20,32")
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--json", help="write the rows to this file too")
    args = parser.parse_args()
    tune_cpu()
    device = select_device("auto")
    amp = autocast_dtype(device, True)
    default = augment.STACK_VIEWS_UP_TO
    rows = []
    for name in args.models.split(","):
        model = prepare_model(create_model(name, num_classes=10, in_chans=1, img_size=28), device).eval()
        for batch_size in (int(b) for b in args.batch_sizes.split(",")):
            batch = torch.rand(batch_size, 1, 28, 28, device=device)
            steps = {"stacked": views_step(model, batch, amp, default),
                     "view by view": views_step(model, batch, amp, 0)}
            measured = measure_interleaved(steps, device, warmup=2, repeats=args.repeats)
            stacked, one_by_one = (measured[way].median_s * 1e3 for way in steps)
            rows.append({"model": name, "batch": batch_size, "stacked_ms": round(stacked, 3),
                         "view_by_view_ms": round(one_by_one, 3), "speedup": round(one_by_one / stacked, 2)})
            print(f"{name} batch {batch_size:3d}: six views stacked {stacked:7.2f} ms, view by view "
                  f"{one_by_one:7.2f} ms ({one_by_one / stacked:.2f}x)", flush=True)
    augment.STACK_VIEWS_UP_TO = default
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"device": str(device), "autocast": str(amp), "stack_views_up_to": default, "rows": rows},
                      handle, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
