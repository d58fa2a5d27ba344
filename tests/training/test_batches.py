"""An epoch's batches: texts grouped by length (fewer padded slots, still random batches), reproducible per
(seed, epoch) and from any step on, and the batches the time-budget probe times."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from compact_transformers.data import ImageDataset, ImageSplit
from compact_transformers.data.text import TextDataset, TextSplit, Vocabulary
from compact_transformers.training.batches import DeviceBatches, group_by_length
from compact_transformers.training.distributed import DistInfo
from compact_transformers.training.recipe import TrainConfig
from compact_transformers.training.rundir import CONFIG_FILE, load_run_config

CPU = torch.device("cpu")


def texts_of_lengths(lengths: torch.Tensor, seq_len: int = 600) -> TextDataset:
    """Texts of the given lengths; each text's ids are its own index + 2 (so a batch says which texts it holds)."""
    n = len(lengths)
    ids = (torch.arange(n)[:, None] + 2).expand(n, seq_len).clone()
    ids[torch.arange(seq_len)[None, :] >= lengths[:, None]] = 1
    split = TextSplit(ids, lengths, torch.arange(n) % 3)
    return TextDataset("texts", split, split, None, ["a", "b", "c"], Vocabulary(["<unk>", "<pad>"]), seq_len)


def skewed_lengths(n: int, seed: int = 0) -> torch.Tensor:
    """Most texts short, a few long (as news articles are): random batches are cut to a long one."""
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(n, generator=generator) ** 3 * 599 + 1).long()


def padded_slots(batches: list) -> int:
    return sum(batch.inputs.numel() for batch in batches)


def texts_in(batch) -> list[int]:
    return (batch.inputs[:, 0] - 2).tolist()


def test_group_by_length_keeps_every_text_in_a_batch_of_its_own_run() -> None:
    lengths = skewed_lengths(103)
    order = torch.randperm(103, generator=torch.Generator().manual_seed(5))
    grouped = group_by_length(order, lengths, batch_size=4, bucket=5, generator=torch.Generator().manual_seed(6))
    assert sorted(grouped.tolist()) == list(range(103))  # a permutation still
    assert grouped[100:].tolist() == order[100:].tolist()  # the 3 texts no full batch takes stay at the end
    runs = [set(run.tolist()) for run in order[:100].split(20)]
    batches = grouped[:100].view(25, 4)
    for batch in batches:
        run = [i for i, members in enumerate(runs) if set(batch.tolist()) <= members]
        assert len(run) == 1, "a batch mixes texts of two runs"
        assert lengths[batch].tolist() == sorted(lengths[batch].tolist(), reverse=True)
    # within a run the batches are slices of its texts sorted by length: no two batches of a run overlap in length
    for members in runs:
        spans = sorted((int(lengths[b].min()), int(lengths[b].max())) for b in batches if set(b.tolist()) <= members)
        assert all(low_next >= high for (_, high), (low_next, _) in zip(spans, spans[1:], strict=False))
    # and the batches are shuffled: not run after run
    first_run_of = [next(i for i, m in enumerate(runs) if set(b.tolist()) <= m) for b in batches]
    assert first_run_of != sorted(first_run_of)


def test_group_by_length_of_one_batch_per_run_is_the_order_itself() -> None:
    order = torch.randperm(50)
    lengths = skewed_lengths(50)
    assert torch.equal(group_by_length(order, lengths, 8, 1, torch.Generator()), order)
    assert torch.equal(group_by_length(order[:5], lengths, 8, 50, torch.Generator()), order[:5])  # no full batch


def test_text_batches_grouped_by_length_pad_less_and_still_cover_the_corpus() -> None:
    data = texts_of_lengths(skewed_lengths(640))
    grouped = DeviceBatches(data, TrainConfig(batch_size=32, seed=3), CPU, DistInfo())
    plain = DeviceBatches(data, TrainConfig(batch_size=32, seed=3, length_bucket=1), CPU, DistInfo())
    for epoch in (0, 1):
        with_groups, without = list(grouped.epoch(epoch, 0)), list(plain.epoch(epoch, 0))
        assert len(with_groups) == len(without) == 20
        assert sorted(sum(map(texts_in, with_groups), [])) == list(range(640))
        real = int(data.train.lengths.sum())
        assert real <= padded_slots(with_groups) < 0.7 * padded_slots(without)
        for batch in with_groups:  # each batch cut to its longest text, masks true on the real tokens only
            assert batch.inputs.shape[1] == int(batch.mask.sum(dim=1).max())
            assert torch.equal(batch.mask.sum(dim=1), data.train.lengths[texts_in(batch)])
    assert list(map(texts_in, grouped.epoch(0, 0))) != list(map(texts_in, grouped.epoch(1, 0)))


def test_text_batches_are_the_same_for_a_seed_and_epoch_and_from_any_step() -> None:
    data = texts_of_lengths(skewed_lengths(200))
    config = TrainConfig(batch_size=16, seed=7)
    full = list(map(texts_in, DeviceBatches(data, config, CPU, DistInfo()).epoch(2, 0)))
    again = list(map(texts_in, DeviceBatches(data, config, CPU, DistInfo()).epoch(2, 0)))
    resumed = list(map(texts_in, DeviceBatches(data, config, CPU, DistInfo()).epoch(2, 5)))
    assert full == again and resumed == full[5:]
    other_seed = list(map(texts_in, DeviceBatches(data, config.replace(seed=8), CPU, DistInfo()).epoch(2, 0)))
    assert other_seed != full


def test_two_processes_share_each_grouped_global_batch() -> None:
    data = texts_of_lengths(skewed_lengths(160))
    config = TrainConfig(batch_size=8, seed=1)
    one = list(map(texts_in, DeviceBatches(data, config.replace(batch_size=16), CPU, DistInfo()).epoch(0, 0)))
    ranks = [list(map(texts_in, DeviceBatches(data, config, CPU, DistInfo(rank, 2, rank)).epoch(0, 0)))
             for rank in (0, 1)]  # fmt: skip
    assert [a + b for a, b in zip(*ranks, strict=True)] == one


def test_the_probe_times_batches_spread_over_an_epochs_lengths() -> None:
    data = texts_of_lengths(skewed_lengths(640))
    batches = DeviceBatches(data, TrainConfig(batch_size=32, seed=0), CPU, DistInfo())
    widths = sorted(batch.inputs.shape[1] for batch in batches.epoch(0, 0))  # 20 batches
    probe = [batch.inputs.shape[1] for batch in batches.probe_batches(4)]
    assert sorted(probe) == [widths[2], widths[7], widths[12], widths[17]]  # the middle of each quarter
    assert widths[17] > 2 * widths[2]  # grouped by length: the first batch alone would be no guide
    assert len(batches.probe_batches(40)) == 20  # never more than the epoch has
    train = ImageSplit(torch.zeros(64, 1, 2, 2, dtype=torch.uint8), torch.arange(64))  # labels number the images
    images = ImageDataset("numbered", train, train, None, [str(i) for i in range(64)], (0.5,), (0.25,))
    image_batches = DeviceBatches(images, TrainConfig(batch_size=16, seed=0), CPU, DistInfo())
    (probe_batch,) = image_batches.probe_batches(4)
    assert torch.equal(probe_batch.labels, next(iter(image_batches.epoch(0, 0))).labels)


def test_runs_saved_before_length_groups_resume_with_plain_shuffled_batches(tmp_path: Path) -> None:
    saved = TrainConfig(model="text_cct_2_1x1").to_dict()
    del saved["length_bucket"]
    (tmp_path / CONFIG_FILE).write_text(yaml.safe_dump(saved))
    assert load_run_config(tmp_path).length_bucket == 1
    saved["length_bucket"] = 20
    (tmp_path / CONFIG_FILE).write_text(yaml.safe_dump(saved))
    assert load_run_config(tmp_path).length_bucket == 20


@pytest.mark.parametrize("value", [0, -3])
def test_length_bucket_must_be_positive(value: int) -> None:
    from compact_transformers.errors import ConfigError

    with pytest.raises(ConfigError, match="length_bucket must be >= 1"):
        TrainConfig(length_bucket=value)
