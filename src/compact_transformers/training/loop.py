"""One training loop for image classification with the paper's recipe.

Small datasets live on the training device as uint8 tensors; each step indexes a batch, augments it there
(batched, per-sample randomness), mixes it, and takes an optimizer step under autocast. Every epoch the run
directory gets a metrics record and an atomically replaced ``last`` (and ``best``) checkpoint; SIGINT /
SIGTERM save ``last`` mid-epoch, and ``resume`` continues bit-for-bit on the same machine.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import re
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..augment import AugmentConfig, EvalTransform, MixupCutmix, TrainAugment, smooth_one_hot
from ..data import ImageDataset, load_dataset, subset_per_class
from ..models import create_model, get_preset, load_model
from ..models.vision import to_pair
from ..models.weights import CheckpointError, save_model
from .distributed import DistInfo, all_reduce_sum, cleanup, setup_distributed
from .losses import DistillationLoss, SoftTargetCrossEntropy
from .metrics import EvalResult, accuracy_counts, predict_logits, result_from_counts
from .optim import build_optimizer
from .plots import plot_confusion, plot_curves
from .recipe import TrainConfig
from .runtime import autocast_dtype, prepare_input, prepare_model, select_device
from .schedule import LRSchedule
from .state import checkpoint_dir, load_state, rng_state, run_model_dir, save_checkpoint, set_rng_state

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.yaml"
FINAL_FILE = "final.json"


@dataclass
class RunResult:
    run_dir: Path
    epochs_done: int
    best_top1: float
    final: dict = field(default_factory=dict)
    interrupted: bool = False


class _StopFlag:
    """Turns SIGINT / SIGTERM into a flag checked after every step, so a checkpoint can be written."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "_StopFlag":
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum: int, frame: object) -> None:
        if self.signal is not None:  # second signal: give up at once
            raise KeyboardInterrupt
        self.signal = signum

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


# ------------------------------------------------------------------------------------------- set-up


def load_training_data(config: TrainConfig) -> ImageDataset:
    name = config.dataset if config.dataset or config.data else "digits"
    resize_on_load = name in ("folder", "flowers102") or (name is None and config.data is not None)
    data = load_dataset(
        name,
        config.data,
        val_fraction=config.val_fraction,
        seed=config.seed,
        image_size=config.img_size if resize_on_load else None,
    )
    if config.num_classes is not None and config.num_classes != data.num_classes:
        raise ValueError(f"num_classes is {config.num_classes} but {data.name} has {data.num_classes} classes")
    if config.samples_per_class is not None:
        keep = subset_per_class(data.train.labels, config.samples_per_class, config.seed)
        data.train = data.train.select(keep)
        if data.train_stream is not None:
            data.train_stream = data.train_stream.select(keep)
    return data


def input_size(config: TrainConfig, data: ImageDataset) -> tuple[int, int]:
    """(height, width) the model sees: ``config.img_size`` if given, else the dataset's own."""
    return to_pair(config.img_size) if config.img_size is not None else data.image_size


def make_augment_config(config: TrainConfig, img_size: tuple[int, int], mean: tuple[float, ...],
                        std: tuple[float, ...]) -> AugmentConfig:
    """The augmentation settings of ``config`` for images of ``img_size`` normalised with mean/std."""
    return AugmentConfig(
        image_size=img_size, mean=mean, std=std, scale=config.scale, ratio=config.ratio, hflip=config.hflip,
        translate=config.translate, randaugment=config.aa, reprob=config.reprob, interpolation=config.interpolation,
    )  # fmt: skip


def build_student(config: TrainConfig, data: ImageDataset, img_size: tuple[int, int]) -> nn.Module:
    mean = tuple(config.mean) if config.mean is not None else tuple(data.mean)
    std = tuple(config.std) if config.std is not None else tuple(data.std)
    if len(mean) != data.in_chans or len(std) != data.in_chans:  # fail before the run directory is made
        raise ValueError(
            f"mean/std have {len(mean)}/{len(std)} values but the {data.name} images have {data.in_chans} "
            f"channel(s): pass --mean/--std with {data.in_chans} value(s), or none for the dataset's own"
        )
    regularisation = {
        key: value
        for key, value in (("drop_path", config.drop_path), ("dropout", config.drop), ("attn_dropout", config.attn_drop))
        if value is not None
    }
    return create_model(
        config.model,
        pretrained=resolve_pretrained(config.pretrained),
        num_classes=data.num_classes,
        in_chans=data.in_chans,
        img_size=img_size,
        mean=mean,
        std=std,
        # what `cct eval` / `cct predict` need to see the data as validation did
        extra={"classes": list(data.classes), "dataset": data.name, "interpolation": config.interpolation,
               "seed": config.seed, "val_fraction": config.val_fraction, "flip_tta": config.uses_flip_tta},
        **regularisation,
    )


def resolve_pretrained(source: str | None) -> str | None:
    """A path or URL as given (a run directory means its final model, else its best checkpoint); a preset
    name means that preset's released weights."""
    if source is None or source.startswith(("http://", "https://")):
        return source
    path = run_model_dir(Path(source))
    if path.exists():
        return str(path)
    preset = get_preset(source)  # raises with close names for a typo
    if preset.weights_url is None:
        raise CheckpointError(f"--pretrained {source}: no such file, and preset {preset.name} has no released weights")
    return preset.weights_url


def load_teacher(source: str, device: torch.device) -> nn.Module:
    """A trained teacher: a run directory (its best checkpoint), a saved model, or a preset with released
    weights."""
    path = run_model_dir(Path(source), best_first=True)
    if path.exists():
        teacher = load_model(path)
    else:
        teacher = create_model(source, pretrained=True)
    teacher.eval().requires_grad_(False)
    return prepare_model(teacher, device)


def new_run_dir(config: TrainConfig) -> Path:
    base = Path(config.output)
    dataset = config.dataset or ("digits" if config.data is None else Path(config.data).name)
    model = re.sub(r"[^A-Za-z0-9_.-]+", "_", config.model)  # aliases such as CCT-7/3x1
    name = config.name or f"{model}-{dataset}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir, suffix = base / name, 1
    while run_dir.exists():  # never write into (and damage) an existing run
        suffix += 1
        run_dir = base / f"{name}-{suffix}"
    return run_dir


# --------------------------------------------------------------------------------------------- train


def train(config: TrainConfig, run_dir: Path | None = None, resume: bool = False,
          budget_start: float | None = None, max_epochs: int | None = None,
          data: ImageDataset | None = None) -> RunResult:
    """Train ``config``; with ``resume`` continue the run in ``run_dir`` from its last checkpoint.

    ``budget_start`` (a ``time.monotonic()`` value, default: now) is when ``config.time_limit`` began, so
    that a caller's own set-up counts against the limit; the final evaluation is kept inside it too.
    ``max_epochs``: ``config.epochs`` was planned from the time limit, and the refit after the first
    epoch may raise it up to this many when epochs turn out faster than planned. ``data``: the dataset
    already loaded for ``config`` by :func:`load_training_data` (loaded here when None)."""
    budget_start = time.monotonic() if budget_start is None else budget_start
    device = select_device(config.device)
    info = setup_distributed(device)
    try:
        return _train(config, device, info, run_dir, resume, budget_start, max_epochs, data)
    finally:
        cleanup(info)


def _train(config: TrainConfig, device: torch.device, info: DistInfo, run_dir: Path | None,
           resume: bool, budget_start: float, max_epochs: int | None, data: ImageDataset | None) -> RunResult:
    if info.enabled:  # each rank planned a time-limited schedule from its own probe: all follow rank 0's
        plan = {name: getattr(config, name) for name in ("epochs", "warmup_epochs", "cooldown_epochs", "eval_interval")}
        plan = _from_rank0({**plan, "max_epochs": max_epochs}, info)
        max_epochs = plan.pop("max_epochs")
        config = config.replace(**plan)
    torch.manual_seed(config.seed)
    data = load_training_data(config) if data is None else data
    img_size = input_size(config, data)
    if resume:
        last = checkpoint_dir(run_dir)
        state = load_state(last)
        if state.get("world_size", 1) != info.world_size:
            raise CheckpointError(
                f"{run_dir} was trained with {state.get('world_size', 1)} process(es); resume it with the same "
                f"number (this run has {info.world_size})"
            )
        model = load_model(last)
    else:
        state = None
        model = build_student(config, data, img_size)
        run_dir = run_dir or new_run_dir(config)
        if info.enabled:  # every rank uses rank 0's name (names carry a timestamp)
            shared = [str(run_dir)]
            torch.distributed.broadcast_object_list(shared, src=0)
            run_dir = Path(shared[0])
    model = prepare_model(model, device)
    model_config = model.config
    # Same initial weights on every rank (seeded above), different augmentation draws per rank.
    torch.manual_seed(config.seed + info.rank)
    mean, std = model_config.mean, model_config.std

    augment_config = make_augment_config(config, img_size, mean, std)
    train_transform = TrainAugment(augment_config)
    eval_transform = EvalTransform(augment_config)
    num_classes = data.num_classes
    mixer = MixupCutmix(
        mixup_alpha=config.mixup, cutmix_alpha=config.cutmix, prob=config.mixup_prob,
        switch_prob=config.mixup_switch_prob, label_smoothing=config.smoothing, num_classes=num_classes,
    )  # fmt: skip
    teacher = load_teacher(config.teacher, device) if config.teacher else None
    if teacher is not None and (teacher.config.num_classes != data.num_classes
                                or tuple(teacher.config.img_size) != tuple(model_config.img_size)):
        raise ValueError(
            f"teacher {config.teacher} is for {teacher.config.num_classes} classes at "
            f"{teacher.config.img_size}, the student for {data.num_classes} at {model_config.img_size}"
        )
    criterion: nn.Module = SoftTargetCrossEntropy()
    if teacher is not None:
        criterion = DistillationLoss(criterion, config.distill_alpha)

    streamed = data.train.images is None
    train_images = None if streamed else data.train.images.to(device)
    train_labels = data.train.labels.to(device)
    num_train = train_labels.shape[0]
    val_images, val_labels = data.val.images.to(device), data.val.labels.to(device)
    global_batch = min(config.batch_size * info.world_size, num_train)
    local_batch = global_batch // info.world_size
    steps_per_epoch = max(1, num_train // global_batch)

    def epoch_batches(epoch: int, first_step: int):
        """(uint8 images, labels) of this process for the steps of an epoch, from memory or a stream."""
        order = _epoch_order(num_train, config.seed, epoch)
        index_lists = [
            order[step * global_batch + info.rank * local_batch :][:local_batch]
            for step in range(first_step, steps_per_epoch)
        ]
        if not streamed:
            for index in index_lists:
                index = index.to(device)
                yield train_images[index], train_labels[index]
            return
        loader = torch.utils.data.DataLoader(
            data.train_stream, batch_sampler=[index.tolist() for index in index_lists],
            num_workers=config.workers, pin_memory=device.type == "cuda",
            generator=torch.Generator().manual_seed(config.seed * 100_003 + epoch),  # keeps the global RNG
        )  # fmt: skip
        for images, labels in loader:
            yield images.to(device, non_blocking=True), labels.to(device, non_blocking=True)

    # lr scales with the global batch (the recipe's lr is for lr_base_batch images per step)
    scaled = config.replace(batch_size=local_batch * info.world_size)

    optimizer = build_optimizer(model, scaled)
    schedule = LRSchedule.from_config(optimizer, scaled, steps_per_epoch=steps_per_epoch)
    amp_dtype = autocast_dtype(device, config.amp)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    ema = _make_ema(model) if config.model_ema else None
    train_model: nn.Module = model
    if info.enabled:
        train_model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if config.compile:
        train_model = torch.compile(train_model)

    start_epoch, start_step, best_top1, history, partial = 0, 0, -1.0, [], None
    fitted: dict | None = None  # epochs/warmup/cooldown fitted to --time-limit after the first epoch
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        scaler.load_state_dict(state["scaler"])
        if ema is not None and "ema" in state:
            ema.load_state_dict(state["ema"])
        set_rng_state(state["rng"][info.rank] if isinstance(state["rng"], list) else state["rng"])
        start_epoch, start_step = state["epoch"], state["step_in_epoch"]
        fitted = state.get("fitted_schedule")
        if fitted:
            config = config.replace(**state["fitted_schedule"])
            scaled = scaled.replace(**state["fitted_schedule"])
            schedule = LRSchedule.from_config(optimizer, scaled, steps_per_epoch=steps_per_epoch)
            schedule.load_state_dict(state["schedule"])
        best_top1, partial = state["best_top1"], state.get("partial")
        history = [r for r in _read_history(run_dir) if r["epoch"] <= start_epoch]
    elif info.is_main:
        run_dir.mkdir(parents=True, exist_ok=False)
        _write_config(run_dir / CONFIG_FILE, config)
    if info.is_main:
        _rewrite_history(run_dir, history)
        logger.info("run directory: %s", run_dir)
        _announce(config, data, model, device, amp_dtype, info, steps_per_epoch, global_batch)

    def checkpoint(target: str, epoch: int, step_in_epoch: int, partial_sums: dict | None) -> None:
        rngs = _gather_rng(info)
        if not info.is_main:
            return
        save_checkpoint(
            run_dir / "checkpoints" / target,
            model,
            {
                "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
                "scaler": scaler.state_dict(), "rng": rngs, "epoch": epoch, "step_in_epoch": step_in_epoch,
                "best_top1": best_top1, "partial": partial_sums, "world_size": info.world_size,
                "fitted_schedule": fitted, "finish_reserve": finish_reserve,
                **({"ema": ema.state_dict()} if ema is not None else {}),
            },
        )  # fmt: skip

    started = budget_start
    # seconds kept for the final validation, test and writing, once validation was timed after epoch 1
    finish_reserve = state.get("finish_reserve", 0.0) if state is not None else 0.0

    def over_time() -> bool:
        return config.time_limit is not None and time.monotonic() - started > config.time_limit * 60 - finish_reserve

    last_val: EvalResult | None = None  # the final model's validation, when its last epoch had one
    interrupted = False
    epoch = start_epoch
    with _StopFlag() as stop:
        epoch = start_epoch - 1
        while epoch + 1 < config.epochs:
            epoch += 1
            mixing = (config.mixup > 0 or config.cutmix > 0) and not (
                config.mixup_off_epoch and epoch >= config.mixup_off_epoch
            )
            sums = _zero_sums(device) if partial is None else {k: v.to(device) for k, v in partial.items()}
            partial = None
            progress = _progress(config, info, epoch, steps_per_epoch, start_step)
            train_model.train()
            tick = time.perf_counter()
            half_tick = None  # steady-state timing for --time-limit (the first steps include warm-up)
            for step, (batch_images, labels) in enumerate(epoch_batches(epoch, start_step), start=start_step):
                if step == steps_per_epoch // 2:
                    half_tick = time.perf_counter()
                inputs = train_transform(batch_images)
                if mixing:
                    inputs, targets = mixer(inputs, labels)
                else:
                    targets = smooth_one_hot(labels, num_classes, config.smoothing)
                inputs = prepare_input(inputs)
                lr = schedule.step(epoch * steps_per_epoch + step)
                with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                    logits = train_model(inputs)
                    teacher_logits = teacher(inputs) if teacher is not None else None
                logits = logits.float()
                if teacher is not None:
                    loss = criterion(logits, targets, teacher_logits.float())
                else:
                    loss = criterion(logits, targets)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"loss is {loss.item()} at epoch {epoch} step {step}: lower --lr")
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if config.clip_grad is not None:
                    scaler.unscale_(optimizer)
                    nn.utils.clip_grad_norm_(model.parameters(), config.clip_grad)
                scaler.step(optimizer)
                scaler.update()
                if ema is not None:
                    _update_ema(ema, model, config.model_ema_decay)
                with torch.no_grad():
                    sums["loss"] += loss.detach().double() * labels.shape[0]
                    sums["top1"] += (logits.argmax(dim=1) == labels).sum().double()
                    sums["count"] += labels.shape[0]
                if progress is not None:
                    seen = (step - start_step + 1) * global_batch
                    progress.set_postfix(
                        loss=f"{loss.item():.3f}", acc=f"{100 * sums['top1'].item() / sums['count'].item():.1f}",
                        lr=f"{lr:.2e}", img_s=f"{seen / (time.perf_counter() - tick):.0f}",
                    )  # fmt: skip
                    progress.update(1)
                if _any_rank(stop.signal is not None or over_time(), device, info):
                    interrupted = _any_rank(stop.signal is not None, device, info)
                    if step + 1 < steps_per_epoch and interrupted:
                        checkpoint("last", epoch, step + 1, {k: v.cpu() for k, v in sums.items()})
                        if progress is not None:
                            progress.close()
                        logger.warning("interrupted: saved %s; continue with `cct train --resume %s`",
                                       run_dir / "checkpoints" / "last", run_dir)
                        return RunResult(run_dir, epoch, best_top1, interrupted=True)
                    if not interrupted:  # the partial epoch is evaluated and recorded as the last one
                        logger.warning("time limit of %.1f min reached during epoch %d", config.time_limit, epoch + 1)
                    break
            train_end = time.perf_counter()
            seconds = train_end - tick
            if progress is not None:
                progress.close()
            start_step = 0
            all_reduce_sum(sums, info)
            count = max(sums["count"].item(), 1.0)
            record = {
                "epoch": epoch + 1, "lr": schedule.last_lr, "train_loss": sums["loss"].item() / count,
                "train_top1": 100 * sums["top1"].item() / count,
                "img_per_s": sums["count"].item() / max(seconds, 1e-9), "epoch_seconds": seconds,
            }  # fmt: skip
            last_epoch = epoch + 1 == config.epochs
            stopped = _any_rank(stop.signal is not None or over_time(), device, info)
            # a time-limited run also validates after its first epoch, to time validation for the refit
            first_of_timed = config.time_limit is not None and state is None and epoch == 0
            eval_tick = time.perf_counter()
            last_val = None
            if (epoch + 1) % config.eval_interval == 0 or last_epoch or stopped or first_of_timed:
                val = last_val = _evaluate(model, val_images, val_labels, eval_transform, num_classes, amp_dtype, info)
                record.update({"val_loss": val.loss, "val_top1": val.top1, "val_top5": val.top5})
                if ema is not None:
                    ema_val = _evaluate(ema, val_images, val_labels, eval_transform, num_classes, amp_dtype, info)
                    record["val_top1_ema"] = ema_val.top1
                if val.top1 > best_top1:
                    best_top1 = val.top1
                    checkpoint("best", epoch + 1, 0, None)
            if first_of_timed and not stopped:
                steady = 2 * (train_end - half_tick) if half_tick is not None else seconds
                measured = EpochEstimate(steady, time.perf_counter() - eval_tick)
                epoch_estimate = measured.per_epoch(config.eval_interval)
                # a stop for time is followed by a validation, then the test split and the files
                test_share = len(data.test) / max(len(data.val), 1) if data.test is not None else 0.0
                finish_reserve = measured.eval_seconds * (1 + test_share) + FINISH_SECONDS
                elapsed = time.monotonic() - started + finish_reserve
                fitted = _from_rank0(fit_schedule_to_time(config, elapsed, epoch_estimate, max_epochs), info)
                if fitted is not None:
                    config, scaled = config.replace(**fitted), scaled.replace(**fitted)
                    schedule = LRSchedule.from_config(optimizer, scaled, steps_per_epoch=steps_per_epoch)
                    if info.is_main:
                        logger.info("time limit %.1f min: schedule fitted to %d epochs", config.time_limit,
                                    config.epochs)
            history.append(record)
            checkpoint("last", epoch + 1, 0, None)
            if info.is_main:
                _append_history(run_dir, record)
                _log_epoch(config, record)
            if stopped:
                interrupted = _any_rank(stop.signal is not None, device, info)
                break

    epochs_done = len(history)
    if interrupted:
        logger.warning("interrupted after epoch %d: continue with `cct train --resume %s`", epochs_done, run_dir)
        return RunResult(run_dir, epochs_done, best_top1, interrupted=True)
    final = finish_run(run_dir, model, data, eval_transform, amp_dtype, info, history, last_val)
    return RunResult(run_dir, epochs_done, best_top1, final=final)


# ------------------------------------------------------------------------------------------ helpers


# Seconds a time-limited run keeps for writing the final model, report and plots.
FINISH_SECONDS = 5.0


def finish_run(run_dir: Path, model: nn.Module, data: ImageDataset, transform: nn.Module,
               amp_dtype: torch.dtype | None, info: DistInfo, history: list[dict],
               val_result: EvalResult | None = None) -> dict:
    """Evaluate the final model on val (unless ``val_result`` is its validation already) and test, write
    final.json, curves and confusion matrix."""
    final: dict = {"epochs": len(history)}
    device = next(model.parameters()).device
    splits = [("val", data.val)] + ([("test", data.test)] if data.test is not None else [])
    for name, split in splits:
        result = val_result if name == "val" and val_result is not None else _evaluate(
            model, split.images.to(device), split.labels.to(device), transform, data.num_classes, amp_dtype, info
        )
        final[name] = result.summary()
        final[f"{name}_per_class"] = dict(zip(data.classes, result.per_class_accuracy()))
        if info.is_main:
            (run_dir / f"confusion_{name}.json").write_text(
                json.dumps({"classes": list(data.classes), "matrix": result.confusion.tolist()})
            )
            plot_confusion(result.confusion, list(data.classes), run_dir / f"confusion_{name}.png",
                           title=f"{data.name} {name}: top-1 {result.top1:.2f}%")
    if info.is_main:
        final["best_val_top1"] = max((r.get("val_top1", -1) for r in history), default=None)
        (run_dir / FINAL_FILE).write_text(json.dumps(final, indent=2))
        save_model(model, run_dir / "model")
        plot_curves(history, run_dir / "curves.png")
        summary = ", ".join(f"{n} top-1 {final[n]['top1']:.2f}%" for n, _ in splits)
        logger.info("done: %s; run directory %s", summary, run_dir)
    return final


@dataclass(frozen=True)
class EpochEstimate:
    """Seconds of one epoch's training steps and of one validation pass."""

    train_seconds: float
    eval_seconds: float

    def per_epoch(self, eval_interval: int) -> float:
        """Seconds per epoch on average when validation runs every ``eval_interval`` epochs."""
        return self.train_seconds + self.eval_seconds / eval_interval


# Time-limited runs validate every k epochs so that validation takes at most this share of the budget.
EVAL_SHARE = 0.04


def plan_eval_interval(estimate: EpochEstimate, share: float = EVAL_SHARE) -> int:
    """The smallest k such that validating every k epochs costs at most ``share`` of the training time."""
    return max(1, math.ceil(estimate.eval_seconds / (share * max(estimate.train_seconds, 1e-9)) - 1e-9))


def estimate_epoch_seconds(config: TrainConfig, data: ImageDataset, probe_steps: int = 10) -> EpochEstimate:
    """Seconds one epoch of ``config`` (training, and a validation pass) will take here, from the fastest
    of a few timed steps on a throwaway copy of the model (other load only slows steps down, and the refit
    after the first epoch shrinks an optimistic plan); ``data`` is :func:`load_training_data`'s for
    ``config``. The global RNG is left untouched."""
    device = select_device(config.device)
    img_size = input_size(config, data)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        model = prepare_model(build_student(config.replace(pretrained=None), data, img_size), device)
        transform = TrainAugment(make_augment_config(config, img_size, model.config.mean, model.config.std))
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
        amp_dtype = autocast_dtype(device, config.amp)
        batch = min(config.batch_size, len(data.train))
        images = data.train.images[:batch].to(device) if data.train.images is not None else None
        if images is None:
            images = torch.stack([data.train_stream[i][0] for i in range(batch)]).to(device)
        labels = smooth_one_hot(data.train.labels[:batch].to(device), data.num_classes, config.smoothing)
        times = []
        for _ in range(probe_steps):
            start = time.perf_counter()
            inputs = prepare_input(transform(images))
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                logits = model(inputs)
            loss = SoftTargetCrossEntropy()(logits.float(), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - start)
    step = min(times[2:])
    steps_per_epoch = max(1, len(data.train) // batch)
    eval_steps = math.ceil(len(data.val) / batch)
    eval_passes = 2 if config.uses_flip_tta else 1
    # an inference batch costs about a third of a training step
    return EpochEstimate(steps_per_epoch * step, eval_passes * eval_steps * step / 3)


def fit_schedule_to_time(config: TrainConfig, elapsed: float, epoch_seconds: float,
                         max_epochs: int | None = None) -> dict | None:
    """Shrink epochs (and warmup/cooldown proportionally) so the whole schedule fits ``time_limit``, after
    the first epoch took ``elapsed`` seconds and later ones are expected to take ``epoch_seconds``; with
    ``max_epochs`` (the epochs were planned from the budget, not chosen) also grow them, up to that many.
    None when the configured epochs are already the ones that fit."""
    remaining = 0.98 * config.time_limit * 60 - elapsed
    fit = 1 + int(max(remaining, 0.0) // max(epoch_seconds, 1e-6))
    fit = min(fit, max(max_epochs or 0, config.epochs))
    if fit == config.epochs or (fit > config.epochs and max_epochs is None):
        return None
    epochs = max(1, fit)
    ratio = epochs / config.epochs
    warmup = min(config.warmup_epochs, round(config.warmup_epochs * ratio))
    cooldown = min(config.cooldown_epochs, round(config.cooldown_epochs * ratio), epochs - warmup)
    return {"epochs": epochs, "warmup_epochs": warmup, "cooldown_epochs": max(0, cooldown)}


def _evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, transform: nn.Module,
              num_classes: int, amp_dtype: torch.dtype | None, info: DistInfo) -> EvalResult:
    shard = slice(info.rank, None, info.world_size)
    flip_tta = bool(model.config.extra.get("flip_tta", False))
    logits = predict_logits(model, images[shard], transform, autocast=amp_dtype, flip_tta=flip_tta)
    counts = accuracy_counts(logits, labels[shard], num_classes)
    return result_from_counts(all_reduce_sum(counts, info))


def _epoch_order(count: int, seed: int, epoch: int) -> torch.Tensor:
    """The epoch's sample order: a pure function of (seed, epoch), so a resumed run sees the same batches."""
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(count, generator=generator)


def _zero_sums(device: torch.device) -> dict[str, torch.Tensor]:
    return {name: torch.zeros((), dtype=torch.float64, device=device) for name in ("loss", "top1", "count")}


def _any_rank(flag: bool, device: torch.device, info: DistInfo) -> bool:
    if not info.enabled:
        return flag
    tensor = torch.tensor(float(flag), device=device)
    all_reduce_sum({"flag": tensor}, info)
    return tensor.item() > 0


def _from_rank0(value: object, info: DistInfo) -> object:
    """Rank 0's ``value`` on every rank, so that all ranks take the same decision."""
    if not info.enabled:
        return value
    shared = [value]
    torch.distributed.broadcast_object_list(shared, src=0)
    return shared[0]


def _gather_rng(info: DistInfo) -> dict | list:
    if not info.enabled:
        return rng_state()
    gathered: list = [None] * info.world_size
    torch.distributed.all_gather_object(gathered, rng_state())
    return gathered


def _make_ema(model: nn.Module) -> nn.Module:
    ema = copy.deepcopy(model).eval()
    ema.requires_grad_(False)
    return ema


@torch.no_grad()
def _update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    ema_params = list(ema.parameters())
    params = [p.detach() for p in model.parameters()]
    torch._foreach_lerp_(ema_params, params, 1.0 - decay)
    for ema_buffer, buffer in zip(ema.buffers(), model.buffers()):
        ema_buffer.copy_(buffer)


def _progress(config: TrainConfig, info: DistInfo, epoch: int, steps: int, start: int):
    if config.quiet or not info.is_main:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=steps, initial=start, desc=f"epoch {epoch + 1}/{config.epochs}", leave=False,
                dynamic_ncols=True, unit="step")


def _log_epoch(config: TrainConfig, record: dict) -> None:
    parts = [f"epoch {record['epoch']}/{config.epochs}", f"loss {record['train_loss']:.4f}"]
    if "val_top1" in record:
        parts.append(f"val top-1 {record['val_top1']:.2f}%")
    parts += [f"lr {record['lr']:.2e}", f"{record['img_per_s']:.0f} img/s", f"{record['epoch_seconds']:.1f}s"]
    logger.info(" | ".join(parts))


def _announce(config, data, model, device, amp_dtype, info, steps_per_epoch, global_batch) -> None:
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    precision = {None: "fp32", torch.bfloat16: "bf16 autocast", torch.float16: "fp16 autocast"}[amp_dtype]
    logger.info(
        "%s (%.2fM params) on %s: %d train / %d val images, %d classes, %s; device %s x%d, %s; "
        "%d epochs x %d steps of %d",
        config.model, params / 1e6, data.name, len(data.train), len(data.val), data.num_classes,
        "x".join(map(str, model.config.img_size)), device, info.world_size, precision, config.epochs,
        steps_per_epoch, global_batch,
    )


def _write_config(path: Path, config: TrainConfig) -> None:
    import yaml

    path.write_text(yaml.safe_dump(_plain(config.to_dict()), sort_keys=False))


def _plain(value: object) -> object:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value


def _read_history(run_dir: Path) -> list[dict]:
    path = run_dir / METRICS_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _rewrite_history(run_dir: Path, history: list[dict]) -> None:
    from ..models.weights import atomic_write

    text = "".join(json.dumps(r) + "\n" for r in history)
    atomic_write(run_dir / METRICS_FILE, lambda tmp: Path(tmp).write_text(text))


def _append_history(run_dir: Path, record: dict) -> None:
    with open(run_dir / METRICS_FILE, "a") as handle:
        handle.write(json.dumps(record) + "\n")


def load_run_config(run_dir: Path) -> TrainConfig:
    """The resolved config saved in a run directory."""
    import yaml

    path = Path(run_dir) / CONFIG_FILE
    if not path.exists():
        raise CheckpointError(f"{run_dir} is not a run directory: {CONFIG_FILE} is missing")
    return TrainConfig.from_dict(yaml.safe_load(path.read_text()))

