"""THE training step: one function for the loop, the time-budget probe and `cct bench`; any modality."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from compact_transformers.augment import TrainAugment, WordDropout
from compact_transformers.benchmark import VARIANTS, ModelSpec, build_step
from compact_transformers.errors import DivergedError
from compact_transformers.models import create_model
from compact_transformers.training import budget, build, loop
from compact_transformers.training import step as step_module
from compact_transformers.training.recipe import TrainConfig, apply_recipe
from compact_transformers.training.step import Batch, build_step_tools, train_step


def tiny_config(output: Path, **changes: object) -> TrainConfig:
    config = apply_recipe(TrainConfig(), "digits", epochs=1)
    return config.replace(samples_per_class=5, batch_size=16, output=str(output), quiet=True, device="cpu", **changes)


def test_loop_probe_and_bench_call_the_same_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    original = step_module.train_step
    # each caller holds the step module's own function, not a copy of its own
    assert loop.train_step is original and budget.train_step is original
    calls: list[tuple[str, step_module.StepTools]] = []

    def recording(model, batch, tools, step):  # the same function, counted per caller
        calls.append((caller, tools))
        return original(model, batch, tools, step)

    for module in (step_module, loop, budget):
        monkeypatch.setattr(module, "train_step", recording)
    config = tiny_config(tmp_path, mixup=0.8, cutmix=1.0, aa="rand-m9-mstd0.5-inc1")

    caller = "loop"
    loop.train(config.replace(name="run"))
    caller = "probe"
    estimate = budget.estimate_epoch_seconds(config, build.load_training_data(config), probe_steps=4)
    caller = "bench"
    build_step(ModelSpec("cct_2_3x2_32", (16, 16), 1), VARIANTS["fast"], "train", 4, torch.device("cpu"),
               torch.bfloat16)()  # fmt: skip

    by_caller = {name: [tools for who, tools in calls if who == name] for name in ("loop", "probe", "bench")}
    assert len(by_caller["loop"]) == 3 and len(by_caller["probe"]) == 4 and len(by_caller["bench"]) == 1
    assert estimate.train_seconds > 0 and estimate.eval_seconds > 0
    # the probe times the run's own step: its augmentation and mixing, not a stripped-down one
    for name in ("loop", "probe", "bench"):
        tools = by_caller[name][0]
        assert isinstance(tools.augment, TrainAugment) and tools.augment.config.randaugment is not None, name
        assert tools.mixer is not None and tools.mixer.mixup_alpha == 0.8, name


def test_a_text_batch_with_a_mask_goes_through_the_same_step() -> None:
    torch.manual_seed(0)
    model = create_model("text_cct_2_1x1", vocab_size=40, word_dim=16, seq_len=12, num_classes=3)
    config = TrainConfig(batch_size=8, lr=1e-3, lr_base_batch=8, warmup_epochs=0, cooldown_epochs=0, epochs=5,
                         mixup=0.0, cutmix=0.0)  # fmt: skip
    tools = build_step_tools(model, config, num_classes=3, steps_per_epoch=10, augment=None)
    ids = torch.randint(2, 40, (8, 12))
    mask = torch.arange(12)[None, :] < torch.randint(3, 13, (8, 1))
    ids[~mask] = 1  # padding
    batch = Batch(ids, torch.randint(0, 3, (8,)), mask)
    losses = [train_step(model, batch, tools, step).loss.item() for step in range(30)]
    assert losses[-1] < 0.5 * losses[0]  # it learns the batch
    assert tools.mixer is None  # no mixing of token ids


def test_text_cutmix_is_the_text_steps_mixer_and_mixes_its_targets() -> None:
    from compact_transformers.augment import TextCutMix

    torch.manual_seed(0)
    model = create_model("text_cct_2_1x1", vocab_size=40, word_dim=16, seq_len=12, num_classes=3,
                         positional_embedding="none")  # fmt: skip
    config = TrainConfig(mixup=0.8, cutmix=1.0, mixup_prob=1.0, smoothing=0.0)
    tools = build_step_tools(model, config, num_classes=3, steps_per_epoch=10, augment=WordDropout(0.1, 0), text=True)
    assert isinstance(tools.mixer, TextCutMix) and tools.mixer.cutmix_alpha == 1.0  # mixup has no text meaning
    assert build_step_tools(model, config.replace(cutmix=0.0), num_classes=3, steps_per_epoch=10, augment=None,
                            text=True).mixer is None  # fmt: skip
    seen = []
    tools.criterion.register_forward_hook(lambda module, args, out: seen.append(args[1]))
    ids = torch.randint(2, 40, (6, 12))
    batch = Batch(ids, torch.tensor([0, 1, 2, 0, 1, 2]), torch.ones(6, 12, dtype=torch.bool))
    for step in range(3):
        assert train_step(model, batch, tools, step).loss.isfinite()
    mixed = [t for t in seen if (t.max(dim=1).values < 1).any()]
    assert len(mixed) >= 2 and all(torch.allclose(t.sum(dim=1), torch.ones(6)) for t in seen)


def test_mixing_switched_off_gives_smoothed_one_hot_targets() -> None:
    torch.manual_seed(0)
    model = create_model("cct_2_3x2_32", img_size=16, in_chans=1, num_classes=4)
    config = TrainConfig(mixup=0.8, cutmix=1.0, smoothing=0.1, aa=None)
    augment = TrainAugment(build.make_augment_config(config, (16, 16), (0.5,), (0.25,)))
    tools = build_step_tools(model, config, num_classes=4, steps_per_epoch=1, augment=augment)
    seen = []
    tools.criterion.register_forward_hook(lambda module, args, out: seen.append(args[1]))
    batch = Batch(torch.randint(0, 256, (6, 1, 16, 16), dtype=torch.uint8), torch.tensor([0, 1, 2, 3, 0, 1]))
    tools.mixer.enabled = False
    train_step(model, batch, tools, 0)
    assert torch.allclose(seen[0], torch.nn.functional.one_hot(batch.labels, 4) * 0.9 + 0.025)


def test_a_diverged_loss_stops_the_epoch_within_a_few_steps_naming_the_learning_rate() -> None:
    """The step does not check its loss (that would wait for a GPU every step); the loop checks the running sum
    every SYNC_EVERY steps, so a NaN stops the epoch within that many steps, before its checkpoint."""
    model = create_model("cct_2_3x2_32", img_size=16, in_chans=1, num_classes=4)
    tools = build_step_tools(model, TrainConfig(aa=None), num_classes=4, steps_per_epoch=100, augment=None)
    with torch.no_grad():
        model.classifier.fc.bias.fill_(float("nan"))
    batch = Batch(torch.randn(4, 1, 16, 16), torch.tensor([0, 1, 2, 3]))
    assert train_step(model, batch, tools, 0).loss.isnan()  # the step itself goes on
    taken = []

    def batches():
        for _ in range(100):
            taken.append(1)
            yield batch

    with pytest.raises(DivergedError, match=r"the training loss is nan by step 15: .*lower --lr"):
        loop.train_one_epoch(model, tools, batches(), first_global_step=0, start_step=0, steps_per_epoch=100,
                             partial=None, should_stop=lambda: False)  # fmt: skip
    assert len(taken) == loop.SYNC_EVERY == 16


def test_a_loss_gone_nan_on_another_process_stops_this_one_at_the_same_check(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """With several processes the divergence check is collective: a rank whose own loss is finite raises too,
    instead of waiting forever in an all-reduce for the rank that stopped."""
    reductions: list[bool] = []

    def another_rank_diverged(flag: bool, info) -> bool:
        reductions.append(flag)
        return True  # the other process's loss is NaN

    monkeypatch.setattr(loop, "any_rank", another_rank_diverged)
    model = create_model("cct_2_3x2_32", img_size=16, in_chans=1, num_classes=4)
    tools = build_step_tools(model, TrainConfig(aa=None), num_classes=4, steps_per_epoch=40, augment=None)
    batch = Batch(torch.randn(4, 1, 16, 16), torch.tensor([0, 1, 2, 3]))
    batches = (batch for _ in range(40))
    with pytest.raises(DivergedError, match=r"not finite on another process \(2 in all\) by step 15"):
        loop.train_one_epoch(model, tools, batches, first_global_step=0, start_step=0, steps_per_epoch=40,
                             partial=None, should_stop=lambda: False,
                             info=loop.DistInfo(rank=0, world_size=2))  # fmt: skip
    assert reductions == [False]  # this rank's own loss was finite; one reduction, at the first check


def test_the_training_step_never_waits_for_the_device() -> None:
    """Augmentation, mixing, forward, loss, backward and optimizer of an image step, and a text step, on the meta
    device: no value is read back and no copy blocks (on a GPU each would leave it idle while the host works)."""
    from device_waits import DeviceWaits

    config = TrainConfig(translate=2, reprob=0.25)
    with torch.device("meta"):
        model = create_model("cct_2_3x2_32", img_size=16, in_chans=1, num_classes=4)
        text_model = create_model("text_cct_2_1x1", vocab_size=40, word_dim=16, seq_len=12, num_classes=3)
    augment = TrainAugment(build.make_augment_config(config, (16, 16), (0.5,), (0.25,)))
    # the plain optimizer: fused AdamW refuses meta tensors (on a GPU it reads nothing back either)
    tools = build_step_tools(model, config, num_classes=4, steps_per_epoch=10, augment=augment,
                             optimizer_kernel="plain")  # fmt: skip
    text_tools = build_step_tools(text_model, apply_recipe(TrainConfig(), "text", epochs=50).replace(cutmix=1.0),
                                  num_classes=3, steps_per_epoch=10, augment=WordDropout(0.1, 0), text=True,
                                  optimizer_kernel="plain")  # fmt: skip
    images = Batch(torch.empty(8, 1, 16, 16, dtype=torch.uint8, device="meta"),
                   torch.empty(8, dtype=torch.long, device="meta"))  # fmt: skip
    texts = Batch(torch.empty(8, 12, dtype=torch.long, device="meta"), torch.empty(8, dtype=torch.long, device="meta"),
                  torch.empty(8, 12, dtype=torch.bool, device="meta"))  # fmt: skip
    with DeviceWaits() as seen:
        for step in range(3):
            out = train_step(model, images, tools, step)
            text_out = train_step(text_model, texts, text_tools, step)
    assert out.loss.device.type == text_out.loss.device.type == "meta"
    assert seen.waits == []