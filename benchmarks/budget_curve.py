"""Accuracy against time budget: `cct train --dataset DATASET --time-limit M` for each M, one after the other,
and a table of what each reached. More budget must never give less accuracy (issue 13's recipe cliff).

    python benchmarks/budget_curve.py                          # Fashion-MNIST at 5, 10, 20, 40, 60 minutes
    python benchmarks/budget_curve.py --minutes 10,60 --output runs/curve --json curve.json
    python benchmarks/budget_curve.py --dataset digits --minutes 0.2,0.5   # a quick look

Each run is the default command with only `--time-limit` changed (plus `--seed`); the figure is the test
split's top-1 (the val split's where there is no test split) from the run's final.json. Run it on an
otherwise idle machine: the budget is wall-clock time, so another process's load costs epochs. The whole
curve takes the sum of the budgets plus a minute or so per run. Exits 1 when a larger budget reached a lower
accuracy by more than --tolerance points.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import yaml


def run_one(dataset: str, minutes: float, output: Path, seed: int, extra: list[str]) -> dict:
    name = f"{dataset}-{minutes:g}min-seed{seed}"
    command = ["cct", "train", "--dataset", dataset, "--time-limit", f"{minutes:g}", "--seed", str(seed),
               "--output", str(output), "--name", name, "--quiet", *extra]
    print("$ " + " ".join(command), flush=True)
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"the run for {minutes:g} min failed ({done.returncode}):\n{done.stderr[-2000:]}")
    final = json.loads((output / name / "final.json").read_text())
    split = "test" if "test" in final else "val"
    planned = re.findall(r"schedule fitted to (\d+) epochs", done.stdout + done.stderr)
    model = yaml.safe_load((output / name / "config.yaml").read_text())["model"]  # the recipe may grow it
    return {"minutes": minutes, "split": split, "model": model, "top1": final[split]["top1"],
            "epochs": final["epochs"], "replans": planned, "wall_s": round(wall, 1), "run_dir": str(output / name)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="fashion_mnist")
    parser.add_argument("--minutes", default="5,10,20,40,60", help="comma-separated budgets in minutes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default="runs/budget-curve", help="folder that receives the runs")
    parser.add_argument("--json", help="write the rows to this file too")
    parser.add_argument("--tolerance", type=float, default=0.0, help="points of accuracy a larger budget may lose")
    parser.add_argument("--extra", default="", help="more `cct train` options, as one string")
    args = parser.parse_args()
    budgets = sorted(float(m) for m in args.minutes.split(","))
    rows = []
    for minutes in budgets:
        rows.append(run_one(args.dataset, minutes, Path(args.output), args.seed, args.extra.split()))
        row = rows[-1]
        print(f"{row['minutes']:6g} min  {row['model']}  {row['split']} top-1 {row['top1']:6.2f}%  "
              f"{row['epochs']:4d} epochs  {row['wall_s']:7.1f} s wall", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"dataset": args.dataset, "seed": args.seed, "rows": rows}, indent=2))
    drops = [(a, b) for a, b in zip(rows, rows[1:]) if b["top1"] < a["top1"] - args.tolerance]
    for a, b in drops:
        print(f"NOT MONOTONE: {b['minutes']:g} min reached {b['top1']:.2f}% < {a['top1']:.2f}% at {a['minutes']:g} min")
    return 1 if drops else 0


if __name__ == "__main__":
    sys.exit(main())
