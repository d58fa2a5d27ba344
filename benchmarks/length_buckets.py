"""What grouping texts by length saves: the seconds of a training epoch with `--length-bucket 50` (the default:
every 50 shuffled batches sorted by length before they are cut) against `--length-bucket 1` (plain shuffled
batches), each batch cut to its longest text either way.

    python benchmarks/length_buckets.py --data ~/data/bbc                          # text_cct_4_2x1, 512 tokens
    python benchmarks/length_buckets.py --data ~/data/bbc --seq-len 1024 --json out.json
    python benchmarks/length_buckets.py                       # no corpus: texts of skewed lengths, made here

The same training step `cct train` runs (bf16 autocast where it uses it), whole epochs of the corpus's training
split timed interleaved by `cct bench`'s `measure_interleaved`; prints the token slots (batch x longest) and
the median seconds of an epoch each way, and their ratios.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable

import torch

from compact_transformers.benchmark import measure_interleaved
from compact_transformers.data.text import TextDataset, TextSplit, Vocabulary, load_text_dataset
from compact_transformers.training.batches import DeviceBatches
from compact_transformers.training.build import build_student, transforms
from compact_transformers.training.distributed import DistInfo
from compact_transformers.training.recipe import TrainConfig
from compact_transformers.training.runtime import autocast_dtype, prepare_model, select_device, tune_cpu
from compact_transformers.training.step import build_step_tools, train_step


def skewed_texts(count: int, seq_len: int, vocab_size: int = 5000) -> TextDataset:
    """Random texts whose lengths are skewed as news articles' are (median ~ seq_len / 8, a long tail)."""
    generator = torch.Generator().manual_seed(0)
    lengths = (torch.rand(count, generator=generator) ** 3 * (seq_len - 1) + 1).long()
    ids = torch.randint(2, vocab_size, (count, seq_len), generator=generator)
    ids[torch.arange(seq_len)[None, :] >= lengths[:, None]] = 1
    split = TextSplit(ids, lengths, torch.randint(0, 5, (count,), generator=generator))
    vocab = Vocabulary(["<unk>", "<pad>"] + [f"w{i}" for i in range(vocab_size - 2)])
    return TextDataset("skewed", split, split, None, [str(i) for i in range(5)], vocab, seq_len)


def epoch_step(config: TrainConfig, data: TextDataset, device: torch.device) -> tuple[Callable[[], None], int]:
    """A function that trains one epoch of ``config`` on ``data``, and the token slots its batches hold."""
    batches = DeviceBatches(data, config, device, DistInfo())
    model = prepare_model(build_student(config, data, None), device)
    augment, _ = transforms(config, data, model)
    tools = build_step_tools(model, config, num_classes=data.num_classes, steps_per_epoch=batches.steps_per_epoch,
                             augment=augment, amp_dtype=autocast_dtype(device, config.amp))  # fmt: skip
    slots = sum(batch.inputs.numel() for batch in batches.epoch(0, 0))
    model.train()

    def step() -> None:
        for index, batch in enumerate(batches.epoch(0, 0)):
            train_step(model, batch, tools, index)

    return step, slots


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=None, help="a text dataset folder or file (none: skewed random texts)")
    parser.add_argument("--model", default="text_cct_4_2x1")
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--texts", type=int, default=2000, help="how many skewed random texts, without --data")
    parser.add_argument("--bucket", type=int, default=50, help="the grouped way's --length-bucket")
    parser.add_argument("--repeats", type=int, default=3, help="timed epochs of each way")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args()
    device = select_device("auto")
    if device.type == "cpu":
        tune_cpu()
    if args.data:
        data = load_text_dataset(None, args.data, val_fraction=0.0, seed=0, seq_len=args.seq_len)
    else:
        data = skewed_texts(args.texts, args.seq_len)
    config = TrainConfig(model=args.model, batch_size=args.batch_size, seq_len=args.seq_len, device=device.type)
    ways = {"grouped": config.replace(length_bucket=args.bucket), "shuffled": config.replace(length_bucket=1)}
    steps, slots = {}, {}
    for name, way in ways.items():
        steps[name], slots[name] = epoch_step(way, data, device)
    measured = measure_interleaved(steps, device, warmup=1, repeats=args.repeats)
    seconds = {name: measured[name].median_s for name in ways}
    real = int(data.train.lengths.sum())
    result = {
        "model": args.model, "data": args.data or "skewed random texts", "texts": len(data.train),
        "seq_len": args.seq_len, "batch_size": args.batch_size, "bucket": args.bucket, "real_tokens": real,
        "slots": slots, "epoch_seconds": seconds,
        "slots_ratio": slots["shuffled"] / slots["grouped"], "speedup": seconds["shuffled"] / seconds["grouped"],
    }  # fmt: skip
    print(f"{args.model}, {len(data.train)} texts of up to {args.seq_len} tokens ({real:,} real), batches of "
          f"{args.batch_size}, {device}")  # fmt: skip
    for name in ways:
        print(f"  {name:9s} {slots[name]:>11,} token slots  {seconds[name]:7.2f} s an epoch")
    print(f"  grouped: {result['slots_ratio']:.2f}x fewer slots, {result['speedup']:.2f}x faster")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
