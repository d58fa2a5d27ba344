"""What each kind of test-time view is worth: the test top-1 of trained image models without TTA, with the
mirror image (``flip_tta``) and with the mirror image and the views shifted by SHIFT pixels (``shift_tta``),
whatever the models were validated with.

    python benchmarks/tta_views.py runs/fashion-10min runs/fashion-60min [--shift 1] [--json out.json]

Each run is evaluated on the split `cct eval RUN` uses (its test split, else validation), with the data
path and split the run recorded. Prints one line per run and, with --json, writes the numbers.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from compact_transformers.augment import EvalTransform
from compact_transformers.cli import _eval_data, _load_for_inference
from compact_transformers.training.metrics import evaluate
from compact_transformers.training.runtime import autocast_dtype, prepare_model, select_device, tune_cpu


def measure(run: str, shift: int) -> dict:
    model, run_dir = _load_for_inference(run)
    options = argparse.Namespace(data=None, dataset=None, val_fraction=None, seed=None)
    data = _eval_data(options, model.config, run_dir)
    split = data.test if data.test is not None else data.val
    device = select_device("auto")
    model = prepare_model(model, device).eval()
    transform = EvalTransform.for_model(model.config)
    amp = autocast_dtype(device, True)
    images, labels = split.images.to(device), split.labels.to(device)
    result = {"run": run, "trained_with": {key: model.config.extra.get(key) for key in ("flip_tta", "shift_tta")}}
    for name, flip, views_shift in (("none", False, 0), ("flip", True, 0), (f"flip+shift{shift}", True, shift)):
        start = time.perf_counter()
        scores = evaluate(model, images, labels, transform, data.num_classes, autocast=amp, flip_tta=flip,
                          shift_tta=views_shift)
        result[name] = {"top1": round(scores.top1, 2), "seconds": round(time.perf_counter() - start, 1)}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="run directories of image models")
    parser.add_argument("--shift", type=int, default=1, help="pixels of the shifted views (default 1)")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    tune_cpu()
    torch.manual_seed(0)
    results = []
    for run in args.runs:
        result = measure(run, args.shift)
        results.append(result)
        print(run, " ".join(f"{name} {value['top1']:.2f}% ({value['seconds']} s)"
                            for name, value in result.items() if name not in ("run", "trained_with")))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
