"""The training loop: build, then ``for epoch: train one epoch -> maybe validate -> checkpoint``.

Small datasets live on the training device as uint8 tensors; each step indexes a batch there and hands it
to THE training step (`step.train_step`: augmentation, mixing, loss, optimizer). Every epoch the run
directory gets a metrics record (also handed to the `tracking.Tracker` of ``--log``) and an atomically
replaced ``last`` (and ``best``) checkpoint; SIGINT / SIGTERM save ``last`` mid-epoch, and ``resume``
continues bit-for-bit on the same machine. A time limit is a `budget.TimeBudget`; the loop only asks it
when to stop and, after the first epoch, for a refit.
"""

from __future__ import annotations

import json
import logging
import math
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..data import ImageDataset
from ..data.text import TextDataset
from ..errors import CheckpointError, DivergedError
from ..faults import kill_point
from ..fileio import atomic_write_text
from ..models import load_model
from .batches import DeviceBatches, keep_on_device
from .budget import EpochEstimate, TimeBudget
from .build import build_student, check_teacher, input_size, load_teacher, load_training_data, transforms
from .distributed import DistInfo, all_reduce_sum, any_rank, cleanup, from_rank0, gather_objects, setup_distributed
from .metrics import EvalResult, accuracy_counts, predict_logits, predict_text_logits, result_from_counts
from .plots import plot_confusion, plot_curves
from .recipe import TrainConfig
from .rundir import (CONFIG_FILE, FINAL_FILE, append_history, new_run_dir, read_history, rewrite_history, to_json,
                     write_run_config)  # fmt: skip
from .runtime import autocast_dtype, prepare_model, select_device
from .state import check_resumable, checkpoint_dir, clean_checkpoints, load_state, save_final_model, rng_state, save_checkpoint, set_rng_state
from .step import Batch, StepTools, build_step_tools, train_step
from .tracking import Tracker, create_tracker

logger = logging.getLogger(__name__)

# Steps between the checks for a NaN loss, which read the running sum on the host: each such read waits for
# the device, and on a GPU a wait in every step leaves it idle while the host launches the next kernels.
SYNC_EVERY = 16
# Seconds between updates of the progress bar's loss, accuracy and speed (its step count moves every step).
PROGRESS_SECONDS = 0.5


@dataclass
class RunResult:
    run_dir: Path
    epochs_done: int
    best_top1: float
    final: dict = field(default_factory=dict)
    interrupted: bool = False
    signal: int = 0  # the signal that interrupted the run (SIGINT / SIGTERM)


def train(config: TrainConfig, run_dir: Path | None = None, resume: bool = False,
          budget: TimeBudget | None = None, data: ImageDataset | None = None) -> RunResult:
    """Train ``config``; with ``resume`` continue the run in ``run_dir`` from its last checkpoint.

    ``budget``: the time budget of ``config.time_limit`` if the caller planned with it already (its clock
    started before the caller's set-up); made here when None. ``data``: the dataset already loaded for
    ``config`` by :func:`load_training_data` (loaded here when None)."""
    if config.time_limit is None:
        budget = None
    elif budget is None:
        budget = TimeBudget(config.time_limit)
    device = select_device(config.device)
    tracker = create_tracker(config.log)  # a missing tensorboard fails here, before the run directory exists
    info = setup_distributed(device)
    try:
        return _train(config, device, info, run_dir, resume, budget, data, tracker)
    finally:
        tracker.close()  # also when the run was interrupted or failed
        cleanup(info)


def _train(config: TrainConfig, device: torch.device, info: DistInfo, run_dir: Path | None, resume: bool,
           budget: TimeBudget | None, data: ImageDataset | None, tracker: Tracker) -> RunResult:
    config = from_rank0(config, info)  # each rank planned a time-limited run from its own probe: use rank 0's
    if budget is not None:
        budget.max_epochs, budget.last_share = from_rank0((budget.max_epochs, budget.last_share), info)
    torch.manual_seed(config.seed)
    data = load_training_data(config) if data is None else data
    kill_point("setup")
    if resume:
        check_resumable(run_dir)  # results without a checkpoint are never overwritten
        if info.is_main:
            clean_checkpoints(run_dir)  # finish a checkpoint swap a kill cut short, drop half-written copies
        from_rank0(None, info)  # the other ranks wait for it
    state = load_state(checkpoint_dir(run_dir)) if resume and _has_checkpoint(run_dir) else None
    if state is not None:
        if state.get("world_size", 1) != info.world_size:
            raise CheckpointError(f"{run_dir} was trained with {state.get('world_size', 1)} process(es); resume it "
                                  f"with the same number (this run has {info.world_size})")  # fmt: skip
        model = load_model(checkpoint_dir(run_dir))
        config = config.replace(**(state.get("fitted_schedule") or {}))  # the time budget's refit, if any
    else:
        model = build_student(config, data, input_size(config, data))
        run_dir = Path(from_rank0(str(run_dir or new_run_dir(config)), info))  # names carry a timestamp
    model = prepare_model(model, device)
    torch.manual_seed(config.seed + info.rank)  # same initial weights on every rank, own augmentation draws
    augment, eval_transform = transforms(config, data, model)  # (None, None) for text
    teacher = load_teacher(config.teacher, device) if config.teacher else None
    if teacher is not None:
        check_teacher(teacher, model, config.teacher)
    batches = DeviceBatches(data, config, device, info)
    keep_on_device(data, device)  # validation and test splits too
    global_config = config.replace(batch_size=batches.global_batch)  # the lr scales with the global batch
    amp_dtype = autocast_dtype(device, config.amp)
    tools = build_step_tools(model, global_config, num_classes=data.num_classes, teacher=teacher,
                             steps_per_epoch=batches.steps_per_epoch, augment=augment,
                             text=isinstance(data, TextDataset), amp_dtype=amp_dtype)  # fmt: skip
    train_model: nn.Module = model
    if info.enabled:
        train_model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if config.compile:
        train_model = torch.compile(train_model)

    epoch, start_step, best_top1, history, partial = 0, 0, -1.0, [], None
    fitted = state.get("fitted_schedule") if state is not None else None
    if state is not None:
        _restore(tools, state, info)
        epoch, start_step, best_top1, partial = state["epoch"], state["step_in_epoch"], state["best_top1"], state.get("partial")
        partial = partial if info.is_main else None  # the sums of all ranks, counted once (on rank 0)
        # the checkpoint's own records: a kill between the checkpoint and metrics.jsonl's append loses none
        history = state["history"] if "history" in state else [r for r in read_history(run_dir) if r["epoch"] <= epoch]
        if budget is not None:  # the reserve measured in the first epoch of the run
            budget.load_state_dict(state.get("budget", {"reserve": state.get("finish_reserve", 0.0)}))
    elif info.is_main:
        if resume:  # killed before its first checkpoint: the run starts again, in its own directory
            logger.warning("%s has no checkpoint yet: training it from the start", run_dir)
        run_dir.mkdir(parents=True, exist_ok=resume)
        write_run_config(run_dir, config)
    if info.is_main:
        rewrite_history(run_dir, history)
        tracker.start(run_dir, epochs_done=epoch)
        logger.info("run directory: %s", run_dir)
        _announce(config, data, model, device, amp_dtype, info, batches)

    def checkpoint(target: str, epoch: int, step_in_epoch: int, partial_sums: dict | None) -> None:
        rngs = gather_objects(rng_state(), info)
        if info.is_main:
            save_checkpoint(run_dir / "checkpoints" / target, model, {
                "optimizer": tools.optimizer.state_dict(), "schedule": tools.schedule.state_dict(),
                "scaler": tools.scaler.state_dict(), "rng": rngs, "epoch": epoch, "step_in_epoch": step_in_epoch,
                "best_top1": best_top1, "partial": partial_sums, "world_size": info.world_size,
                "fitted_schedule": fitted, "budget": budget.state_dict() if budget is not None else None,
                "history": history,
                **({"ema": tools.ema.state_dict()} if tools.ema is not None else {}),
            })  # fmt: skip

    def validate(network: nn.Module, split: str = "val") -> EvalResult:
        return evaluate_split(network, data, split, eval_transform, amp_dtype, info)

    last_val: EvalResult | None = None  # the final model's validation, when its last epoch had one
    if budget is not None:  # from here the schedule follows the clock (see the re-plan after each epoch)
        budget.start_training(progress=tools.schedule.progress_at(epoch * batches.steps_per_epoch + start_step))
    with _StopFlag() as stop:

        def should_stop() -> bool:  # on every rank alike: a signal, or the time budget spent
            return any_rank(stop.signal is not None or (budget is not None and budget.should_stop()), info)

        while epoch < config.epochs:
            if tools.mixer is not None:  # the authors' configs stop mixing late in training
                tools.mixer.enabled = not (config.mixup_off_epoch and epoch >= config.mixup_off_epoch)
            end_step = batches.steps_per_epoch  # a time budget may plan a shorter last epoch
            if budget is not None and epoch + 1 == config.epochs:
                end_step = budget.last_epoch_steps(batches.steps_per_epoch)
            progress = _progress(config, info, epoch, end_step, start_step)
            ran = train_one_epoch(train_model, tools, batches.epoch(epoch, start_step), epoch * batches.steps_per_epoch,
                                  start_step, batches.steps_per_epoch, partial, should_stop, progress,
                                  end_step=end_step, info=info)  # fmt: skip
            interrupted = ran.stopped and any_rank(stop.signal is not None, info)
            if interrupted and ran.next_step < batches.steps_per_epoch:  # mid-epoch: keep the running sums
                sums = all_reduce_sum({k: v.clone() for k, v in ran.sums.items()}, info)  # each rank has its own
                checkpoint("last", epoch, ran.next_step, {k: v.cpu() for k, v in sums.items()})
                logger.warning("interrupted: saved %s; continue with `cct train --resume %s`",
                               run_dir / "checkpoints" / "last", run_dir)
                return RunResult(run_dir, epoch, best_top1, interrupted=True, signal=stop.signal or signal.SIGINT)
            if ran.stopped and not interrupted:  # the partial epoch is evaluated and recorded as the last one
                if ran.next_step == end_step < batches.steps_per_epoch:
                    logger.info("time limit %.1f min: the last epoch, planned to fit, ran %d of %d steps",
                                config.time_limit, end_step, batches.steps_per_epoch)
                else:
                    logger.warning("time limit of %.1f min reached during epoch %d", config.time_limit, epoch + 1)
            record = {"epoch": epoch + 1, "lr": tools.schedule.last_lr, **_epoch_summary(ran, info, batches.unit)}
            # a time-limited run also validates after its first epoch, to time validation for the refit
            first_of_budget = budget is not None and state is None and epoch == 0
            eval_start, last_val, new_best = time.perf_counter(), None, False
            if (epoch + 1) % config.eval_interval == 0 or epoch + 1 == config.epochs or ran.stopped or first_of_budget:
                last_val = validate(model)
                record.update(val_loss=last_val.loss, val_top1=last_val.top1, val_top5=last_val.top5)
                if tools.ema is not None:
                    record["val_top1_ema"] = validate(tools.ema).top1
                if not math.isfinite(last_val.loss):  # a diverged model is never `best`
                    logger.warning("epoch %d: the validation loss is not finite", epoch + 1)
                elif last_val.top1 > best_top1:
                    best_top1, new_best = last_val.top1, True
            if budget is not None and not ran.stopped:  # fit the plan to the measured speed, every epoch
                if first_of_budget:
                    measured = EpochEstimate(ran.steady_seconds, time.perf_counter() - eval_start)
                    test_share = len(data.test) / max(len(data.val), 1) if data.test is not None else 0.0
                    plan = budget.refit(config, measured, test_share)
                else:
                    if last_val is not None:
                        budget.observe_validation(time.perf_counter() - eval_start)
                    plan = budget.replan(config, ran.steady_seconds, epochs_done=epoch + 1)
                plan, used, budget.last_share = from_rank0((plan, budget.progress(), budget.last_share), info)
                if plan is not None and plan["epochs"] != config.epochs:
                    fitted, config = plan, config.replace(**plan)
                    logger.info("time limit %.1f min: schedule fitted to %d epochs", config.time_limit, config.epochs)
                # the schedule follows the clock: it stands at the share of the training time used, and ends
                # with the steps planned (the last epoch may be shorter)
                steps = batches.steps_per_epoch
                total = (config.epochs - 1) * steps + budget.last_epoch_steps(steps)
                tools.schedule.retarget(total, at_step=(epoch + 1) * steps, progress=used)
            history.append(record)  # before the checkpoints, which carry the records
            if new_best:
                checkpoint("best", epoch + 1, 0, None)
            checkpoint("last", epoch + 1, 0, None)
            if info.is_main:
                kill_point("metrics-append")
                append_history(run_dir, record)
                kill_point("metrics-appended")
                _log_epoch(config, record)
                tracker.log_epoch(record)
            epoch, start_step, partial = epoch + 1, 0, None
            if ran.stopped:
                if interrupted:
                    logger.warning("interrupted after epoch %d: continue with `cct train --resume %s`", epoch, run_dir)
                    return RunResult(run_dir, epoch, best_top1, interrupted=True, signal=stop.signal or signal.SIGINT)
                break

    try:
        final = finish_run(run_dir, model, data, eval_transform, amp_dtype, info, history, last_val, tracker=tracker)
    except KeyboardInterrupt:  # SIGINT, or SIGTERM as errors.Interrupted
        logger.warning("interrupted during the final evaluation: every epoch is saved; finish with "
                       "`cct train --resume %s`", run_dir)
        raise
    return RunResult(run_dir, len(history), best_top1, final=final)


# ----------------------------------------------------------------------------------------- one epoch


@dataclass
class EpochRun:
    """What one pass over (part of) an epoch did."""

    sums: dict[str, torch.Tensor]  # loss, top1, count over the epoch's steps (resumed ones included)
    seconds: float  # wall time of the steps run here
    steady_seconds: float  # an epoch's time from its second half (the first steps include warm-up)
    next_step: int  # the step to continue from
    stopped: bool  # should_stop() said so after step next_step - 1


def train_one_epoch(model: nn.Module, tools: StepTools, batches: Iterator[Batch], first_global_step: int,
                    start_step: int, steps_per_epoch: int, partial: dict | None, should_stop: Callable[[], bool],
                    progress=None, end_step: int | None = None, info: DistInfo = DistInfo()) -> EpochRun:
    """Run the steps ``start_step``.. of an epoch; ``partial``: running sums saved by an interrupted run.
    ``should_stop()`` is asked after every step, alike on every rank. ``end_step``: stop (as if told to) before
    this step, when it is before the end of the epoch. Raises DivergedError within ``SYNC_EVERY`` steps of a NaN
    loss on any rank, before the epoch ends, on every rank alike."""
    end_step = steps_per_epoch if end_step is None else end_step
    device = next(model.parameters()).device
    zeros = {name: torch.zeros((), dtype=torch.float64, device=device) for name in ("loss", "top1", "count")}
    sums = zeros if partial is None else {k: v.to(device) for k, v in partial.items()}
    model.train()
    start = time.perf_counter()
    half_time, step, shown_at = None, start_step, -math.inf
    for step, batch in enumerate(batches, start=start_step):
        if step == steps_per_epoch // 2:
            half_time = time.perf_counter()
        out = train_step(model, batch, tools, first_global_step + step)
        with torch.no_grad():
            sums["loss"] += out.loss.double() * len(batch)
            sums["top1"] += (out.logits.argmax(dim=1) == batch.labels).sum().double()
            sums["count"] += len(batch)
        if progress is not None:
            now = time.perf_counter()
            if now - shown_at >= PROGRESS_SECONDS:  # the figures are read from the device: a wait
                shown_at = now
                unit = "img" if batch.mask is None else "seq"
                _show_figures(progress, sums, out, (step - start_step + 1) / (now - start), unit)
            progress.update(1)
        stops = should_stop() or step + 1 >= end_step < steps_per_epoch
        if stops or (step + 1 - start_step) % SYNC_EVERY == 0:
            _check_finite(sums["loss"], first_global_step + step, info)
        if stops:
            return _epoch_run(sums, start, half_time, step + 1, True, progress)
    _check_finite(sums["loss"], first_global_step + step, info)
    return _epoch_run(sums, start, half_time, step + 1, False, progress)


def _check_finite(loss_sum: torch.Tensor, step: int, info: DistInfo) -> None:
    """DivergedError when the summed training loss of any rank is NaN or infinite, raised on every rank (all
    ranks call this at the same steps: ``should_stop`` agrees on all of them), so that no rank is left waiting in
    an all-reduce for one that stopped."""
    finite = bool(torch.isfinite(loss_sum))
    if any_rank(not finite, info):
        where = f"{loss_sum.item()}" if not finite else f"not finite on another process ({info.world_size} in all)"
        raise DivergedError(f"the training loss is {where} by step {step}: training diverged; lower --lr")


def _epoch_run(sums: dict, start: float, half_time: float | None, next_step: int, stopped: bool,
               progress) -> EpochRun:
    end = time.perf_counter()
    if progress is not None:
        progress.close()
    steady = 2 * (end - half_time) if half_time is not None else end - start
    return EpochRun(sums, end - start, steady, next_step, stopped)


def _epoch_summary(ran: EpochRun, info: DistInfo, unit: str) -> dict:
    sums = all_reduce_sum(dict(ran.sums), info)
    count = max(sums["count"].item(), 1.0)
    return {
        "train_loss": sums["loss"].item() / count, "train_top1": 100 * sums["top1"].item() / count,
        f"{unit}_per_s": sums["count"].item() / max(ran.seconds, 1e-9), "epoch_seconds": ran.seconds,
    }  # fmt: skip


# ------------------------------------------------------------------------------------ evaluation, end


def evaluate_split(model: nn.Module, data: ImageDataset, split: str, transform: nn.Module,
                   amp_dtype: torch.dtype | None, info: DistInfo) -> EvalResult:
    """Top-1/top-5, loss and confusion of ``model`` on ``data``'s split, sharded over the processes."""
    device = next(model.parameters()).device
    part, shard = getattr(data, split), slice(info.rank, None, info.world_size)
    if isinstance(data, TextDataset):
        logits = predict_text_logits(model, part.ids[shard].to(device), part.lengths[shard].to(device),
                                     autocast=amp_dtype)
    else:
        extra = model.config.extra
        logits = predict_logits(model, part.images[shard].to(device), transform, autocast=amp_dtype,
                                flip_tta=bool(extra.get("flip_tta", False)), shift_tta=int(extra.get("shift_tta", 0)))
    counts = accuracy_counts(logits, part.labels[shard].to(device), data.num_classes)
    return result_from_counts(all_reduce_sum(counts, info))


def finish_run(run_dir: Path, model: nn.Module, data: ImageDataset, transform: nn.Module,
               amp_dtype: torch.dtype | None, info: DistInfo, history: list[dict],
               val_result: EvalResult | None = None, tracker: Tracker | None = None) -> dict:
    """Evaluate the final model on val (unless ``val_result`` is its validation already) and test, write
    final.json, curves and confusion matrix, and hand the figures to ``tracker``."""
    kill_point("final-evaluation")
    final: dict = {"epochs": len(history)}
    figures: dict[str, Path] = {}  # the PNGs written (none without matplotlib), by tracker tag
    splits = ["val"] + (["test"] if data.test is not None else [])
    for name in splits:
        result = val_result if name == "val" and val_result is not None else evaluate_split(
            model, data, name, transform, amp_dtype, info)
        final[name] = result.summary()
        final[f"{name}_per_class"] = dict(zip(data.classes, result.per_class_accuracy()))
        if info.is_main:
            atomic_write_text(run_dir / f"confusion_{name}.json",
                              json.dumps({"classes": list(data.classes), "matrix": result.confusion.tolist()}))
            figure = plot_confusion(result.confusion, list(data.classes), run_dir / f"confusion_{name}.png",
                                    title=f"{data.name} {name}: top-1 {result.top1:.2f}%")
            if figure is not None:
                figures[f"confusion/{name}"] = figure
    if info.is_main:
        final["best_val_top1"] = max((r.get("val_top1", -1) for r in history), default=None)
        kill_point("final-model")
        save_final_model(model, run_dir)
        kill_point("final-json")
        atomic_write_text(run_dir / FINAL_FILE, to_json(final, indent=2))  # last: a run with final.json is complete
        if plot_curves(history, run_dir / "curves.png") is not None:
            figures["curves"] = run_dir / "curves.png"
        if tracker is not None:
            tracker.log_figures(figures, epoch=len(history))
        summary = ", ".join(f"{n} top-1 {final[n]['top1']:.2f}%" for n in splits)
        logger.info("done: %s; run directory %s", summary, run_dir)
    # The other ranks wait for rank 0's files: a rank that left the gloo group while rank 0 was still writing
    # them was sometimes aborted inside gloo ("terminate called without an active exception").
    from_rank0(None, info)
    return final


# ------------------------------------------------------------------------------------------ helpers


class _StopFlag:
    """Turns SIGINT / SIGTERM into a flag checked after every step, so a checkpoint can be written."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> _StopFlag:
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


def _has_checkpoint(run_dir: Path) -> bool:
    """Whether a run can continue from a checkpoint; a run directory without one (killed during its first
    epoch) starts again; anything else that is not a run directory is an error."""
    try:
        checkpoint_dir(run_dir)
        return True
    except CheckpointError:
        if (Path(run_dir) / CONFIG_FILE).is_file():
            return False
        raise


def _restore(tools: StepTools, state: dict, info: DistInfo) -> None:
    """Optimizer, schedule, scaler, EMA and this rank's RNG as a checkpoint saved them."""
    tools.optimizer.load_state_dict(state["optimizer"])
    tools.schedule.load_state_dict(state["schedule"])
    tools.scaler.load_state_dict(state["scaler"])
    if tools.ema is not None and "ema" in state:
        tools.ema.load_state_dict(state["ema"])
    set_rng_state(state["rng"][info.rank] if isinstance(state["rng"], list) else state["rng"])


def _progress(config: TrainConfig, info: DistInfo, epoch: int, steps: int, start: int):
    """The epoch's progress bar, on a terminal or in a notebook only: written to a file or a CI log its
    refreshes would be one carriage-return line each, and the epoch's log line says what matters."""
    if config.quiet or not info.is_main or not _shows_progress_bar():
        return None
    from tqdm.auto import tqdm

    return tqdm(total=steps, initial=start, desc=f"epoch {epoch + 1}/{config.epochs}", leave=False,
                dynamic_ncols=True, unit="step")


def _shows_progress_bar() -> bool:
    from tqdm.autonotebook import tqdm as auto_tqdm
    from tqdm.std import tqdm as text_tqdm

    in_notebook = auto_tqdm is not text_tqdm  # a widget, no carriage returns
    return in_notebook or (sys.stderr is not None and sys.stderr.isatty())


def _show_figures(progress, sums: dict, out, steps_per_second: float, unit: str) -> None:
    rate = {f"{unit}_s": f"{steps_per_second * out.logits.shape[0]:.0f}"}  # img_s or seq_s
    progress.set_postfix(
        loss=f"{out.loss.item():.3f}", acc=f"{100 * sums['top1'].item() / sums['count'].item():.1f}",
        lr=f"{out.lr:.2e}", refresh=False, **rate,
    )  # fmt: skip


def _log_epoch(config: TrainConfig, record: dict) -> None:
    parts = [f"epoch {record['epoch']}/{config.epochs}", f"loss {record['train_loss']:.4f}"]
    if "val_top1" in record:
        parts.append(f"val top-1 {record['val_top1']:.2f}%")
    rate = next(f"{value:.0f} {key[:-len('_per_s')]}/s" for key, value in record.items() if key.endswith("_per_s"))
    parts += [f"lr {record['lr']:.2e}", rate, f"{record['epoch_seconds']:.1f}s"]
    logger.info(" | ".join(parts))


def _announce(config: TrainConfig, data: ImageDataset, model: nn.Module, device: torch.device,
              amp_dtype: torch.dtype | None, info: DistInfo, batches: DeviceBatches) -> None:
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    precision = {None: "fp32", torch.bfloat16: "bf16 autocast", torch.float16: "fp16 autocast"}[amp_dtype]
    if batches.text:
        what, shape = "texts", f"up to {data.seq_len} tokens, vocabulary {len(data.vocab):,}"
    else:
        what, shape = "images", "x".join(map(str, model.config.img_size))
    logger.info(
        "%s (%.2fM trainable params) on %s: %d train / %d val %s, %d classes, %s; device %s x%d, %s; "
        "%d epochs x %d steps of %d",
        config.model, params / 1e6, data.name, len(data.train), len(data.val), what, data.num_classes, shape,
        device, info.world_size, precision, config.epochs, batches.steps_per_epoch, batches.global_batch,
    )
