"""How well `--time-limit`'s probe predicts an epoch: the probe's estimate of one epoch's training steps
against the first two epochs really trained, for the config `cct train --dataset fashion_mnist
--time-limit MIN` plans (the small recipe at the planned epochs).

    python benchmarks/probe_vs_epoch.py 10     # minutes of the planned budget (default 10)

Needs Fashion-MNIST (Debian's dataset-fashion-mnist). Prints the planned config and, per epoch, the measured
seconds, the probe's and their ratio.
"""

from __future__ import annotations

import sys
import tempfile

from compact_transformers.training.budget import TimeBudget, estimate_epoch_seconds
from compact_transformers.training.build import load_training_data
from compact_transformers.training.loop import train
from compact_transformers.training.recipe import ConfigSource
from compact_transformers.training.rundir import read_history
from compact_transformers.training.runtime import tune_cpu


def main(minutes: float) -> None:
    tune_cpu()
    options = {"dataset": "fashion_mnist", "time_limit": minutes, "quiet": True,
               "output": tempfile.mkdtemp(prefix="cct-probe-")}  # fmt: skip
    source = ConfigSource("small", from_cli=options)
    data = load_training_data(source.resolve())
    planned = TimeBudget(minutes).plan(source, data)
    estimate = estimate_epoch_seconds(planned, data)
    print(f"planned: {planned.epochs} epochs, validation every {planned.eval_interval}, aa={planned.aa}, "
          f"mixup={planned.mixup}, translate={planned.translate}")
    # two epochs of the planned config (its augmentation and model), timed by the loop
    run = train(planned.replace(epochs=2, warmup_epochs=1, cooldown_epochs=0, time_limit=None, eval_interval=1),
                data=data)
    for record in read_history(run.run_dir):
        measured = record["epoch_seconds"]
        print(f"epoch {record['epoch']}: measured {measured:.1f} s, probe {estimate.train_seconds:.1f} s, "
              f"probe/measured {estimate.train_seconds / measured:.3f}")


if __name__ == "__main__":
    main(float(sys.argv[1]) if len(sys.argv) > 1 else 10.0)
