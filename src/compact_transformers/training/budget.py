"""`--time-limit`: one object that plans a run from probe steps, re-plans it after every epoch, says when
to stop, and keeps time for the final evaluation.

The limit covers the whole `cct train` command, set-up included. Before training, a few steps of the real
training step on a throwaway model estimate an epoch, which sets the number of epochs (and how often to
validate). After every epoch the plan is fitted again to the measured speed: the fastest of the last few
epochs (and of the probe), because other load only ever slows a step down, so one slow epoch on a busy machine
does not cut the run short and a faster phase gives the time back. An epoch of which half or more fits is
planned as a shorter last epoch (its steps counted), so that up to a whole epoch of the budget is not left
unused. Epochs that were planned from the budget
may grow back up to the recipe's, epochs the user chose only ever shrink. The learning-rate schedule follows
the clock: after every epoch it stands at the share of the training time used, and it spreads the rest over
the steps the new plan expects (`schedule.LRSchedule.retarget`), so a plan that was too hopeful cannot cut the
cooldown and a pessimistic one cannot rush into it.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import torch

from ..augment import tta_view_count
from ..data import ImageDataset
from ..data.text import TextDataset
from .batches import DeviceBatches
from .build import build_student, input_size, load_teacher, transforms
from .distributed import DistInfo
from .recipe import ConfigSource, TrainConfig, larger_model_for, scaled_warmup_cooldown
from .runtime import autocast_dtype, prepare_model, select_device
from .step import Batch, build_step_tools, train_step

logger = logging.getLogger(__name__)

# Time-limited runs validate every k epochs so that validation takes at most this share of the budget.
EVAL_SHARE = 0.04
# Seconds a time-limited run keeps for writing the final model, report and plots.
FINISH_SECONDS = 5.0
# Share of the budget that plans aim to fill (the rest absorbs jitter).
FILL = 0.98
# Re-plans use the fastest of this many last epochs (and of the probe): contention only slows steps down.
RECENT_EPOCHS = 3
# Plans count an epoch of which at least this share fits, as a last epoch of that many steps (the schedule
# ends with it), instead of leaving up to a whole epoch of the budget unused.
LAST_EPOCH_SHARE = 0.5


@dataclass(frozen=True)
class EpochEstimate:
    """Seconds of one epoch's training steps and of one validation pass."""

    train_seconds: float
    eval_seconds: float

    def per_epoch(self, eval_interval: int) -> float:
        """Seconds per epoch on average when validation runs every ``eval_interval`` epochs."""
        return self.train_seconds + self.eval_seconds / eval_interval


def plan_eval_interval(estimate: EpochEstimate, share: float = EVAL_SHARE) -> int:
    """The smallest k such that validating every k epochs costs at most ``share`` of the training time."""
    return max(1, math.ceil(estimate.eval_seconds / (share * max(estimate.train_seconds, 1e-9)) - 1e-9))


def epochs_that_fit(*, budget_seconds: float, elapsed: float, epoch_seconds: float, epochs_done: int) -> float:
    """The epochs (a fraction for the last) that fill the budget after ``epochs_done`` epochs ended ``elapsed``
    seconds in, when later ones take ``epoch_seconds``."""
    return epochs_done + max(FILL * budget_seconds - elapsed, 0.0) / max(epoch_seconds, 1e-6)


def last_epoch_share(epochs: int, fit: float) -> float:
    """The share of its last epoch that a run of ``epochs`` runs when ``fit`` epochs fit its budget: 1 when
    they all fit, else what fits of the last (at least ``LAST_EPOCH_SHARE``; a later plan or the clock ends a
    run that fits less)."""
    return min(max(fit - (epochs - 1), LAST_EPOCH_SHARE), 1.0)


def fit_schedule(config: TrainConfig, *, budget_seconds: float, elapsed: float, epoch_seconds: float,
                 max_epochs: int | None = None, epochs_done: int = 1) -> dict | None:
    """Epochs (and warmup/cooldown, proportionally) such that the run fits ``budget_seconds``, after
    ``epochs_done`` epochs ended ``elapsed`` seconds in and later ones take ``epoch_seconds``; with
    ``max_epochs`` (epochs planned from the budget) they may also grow, up to that many. An epoch of which
    ``LAST_EPOCH_SHARE`` or more fits counts (see :func:`last_epoch_share`). None: the configured epochs fit."""
    fit = epochs_that_fit(budget_seconds=budget_seconds, elapsed=elapsed, epoch_seconds=epoch_seconds,
                          epochs_done=epochs_done)
    return _schedule_for(config, fit, max_epochs)


def _schedule_for(config: TrainConfig, fit: float, max_epochs: int | None) -> dict | None:
    """fit_schedule's answer when ``fit`` epochs fit the budget."""
    fit = min(int(fit + 1 - LAST_EPOCH_SHARE), max(max_epochs or 0, config.epochs))
    if fit == config.epochs or (fit > config.epochs and max_epochs is None):
        return None
    epochs = max(1, fit)
    return {"epochs": epochs, **scaled_warmup_cooldown(config, epochs)}


class TimeBudget:
    """The seconds one `cct train` command may take, counted from ``start`` (a ``time.monotonic()``)."""

    def __init__(self, minutes: float, start: float | None = None) -> None:
        self.seconds = minutes * 60
        self.start = time.monotonic() if start is None else start
        self.reserve = 0.0  # kept for the final validation, the test split and the files (set by refit)
        self.max_epochs: int | None = None  # set when plan() chose the epochs: refit may grow them to this
        self.recent: list[float] = []  # seconds per epoch (validation share included) of the last epochs
        self.eval_seconds = 0.0  # of one validation pass, measured after the first epoch
        self.train_start, self.progress_offset = 0.0, 0.0  # set by start_training
        self.probe_seconds: float | None = None  # seconds per epoch that plan() estimated from probe steps
        self.last_share = 1.0  # of the last planned epoch that fits (see last_epoch_share), set by each plan
        self.test_share = 0.0  # the test split's size over validation's (set by refit)

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def start_training(self, progress: float = 0.0) -> None:
        """Training starts now, at schedule ``progress`` (a resumed run: where it stopped)."""
        self.train_start, self.progress_offset = self.elapsed(), progress

    def progress(self) -> float:
        """The share of the training time used: from the start of training to the time that leaves the
        reserve (a resumed run spreads what was left of its schedule over its new budget)."""
        span = max(FILL * self.seconds - self.reserve - self.train_start, 1e-9)
        fraction = max(self.elapsed() - self.train_start, 0.0) / span
        return min(self.progress_offset + (1.0 - self.progress_offset) * fraction, 1.0)

    def should_stop(self) -> bool:
        """True once training must end to leave the reserve for finishing."""
        return self.elapsed() > self.seconds - self.reserve

    def last_epoch_steps(self, steps_per_epoch: int) -> int:
        """The steps the last planned epoch runs."""
        return max(1, min(math.ceil(self.last_share * steps_per_epoch), steps_per_epoch))

    def _fit(self, config: TrainConfig, *, elapsed: float, epoch_seconds: float, epochs_done: int,
             max_epochs: int | None) -> dict | None:
        """fit_schedule, also keeping the share of the last epoch that fits."""
        fit = epochs_that_fit(budget_seconds=self.seconds, elapsed=elapsed, epoch_seconds=epoch_seconds,
                              epochs_done=epochs_done)
        fitted = _schedule_for(config, fit, max_epochs)
        self.last_share = last_epoch_share(fitted["epochs"] if fitted is not None else config.epochs, fit)
        return fitted

    def plan(self, source: ConfigSource, data: ImageDataset | TextDataset) -> TrainConfig:
        """The config of ``source`` with the epochs and validation interval that fit, from probe steps. When
        they are many, the recipe may train a larger model instead (``recipe.larger_model_for``): it is probed
        and planned in turn."""
        config = source.resolve()
        estimate = estimate_epoch_seconds(config, data)
        planned, fitted = self._plan_epochs(source, config, estimate)
        probed_views, planned_views = _validation_views(config), _validation_views(planned)
        if planned_views != probed_views:
            # the recipe scales with the epochs: a short run validates on fewer views (no shifted ones below
            # the shifts' epochs) than the recipe's default that was probed, so validation costs less
            estimate = EpochEstimate(estimate.train_seconds, estimate.eval_seconds * planned_views / probed_views)
            planned, fitted = self._plan_epochs(source, config, estimate)
        logger.info("time limit %.1f min, ~%.1f s per epoch here: %d epochs%s, validation every %d",
                    self.seconds / 60, self.probe_seconds, planned.epochs,
                    "" if fitted is not None else " (all of the recipe's: they fit)", planned.eval_interval)
        train_images = len(data.train.labels)
        larger = larger_model_for(source, planned.epochs, train_images=train_images)
        if larger is not None:
            logger.info("%d epochs of %s fit (%.1fM images): training the recipe's larger model %s instead "
                        "(--model %s keeps it)", planned.epochs, planned.model, planned.epochs * train_images / 1e6,
                        larger, planned.model)
            return self.plan(source.with_model(larger), data)
        return planned

    def _plan_epochs(self, source: ConfigSource, config: TrainConfig,
                     estimate: EpochEstimate) -> tuple[TrainConfig, dict | None]:
        """The config resolved with the epochs and validation interval that fit at ``estimate``'s speed, and
        the fitted schedule (None: the recipe's epochs fit)."""
        self.max_epochs = None
        given = source.given()
        interval = config.eval_interval if "eval_interval" in given else plan_eval_interval(estimate)
        epoch_seconds = estimate.per_epoch(interval)
        self.probe_seconds = epoch_seconds
        fitted = self._fit(config, elapsed=self.elapsed() + epoch_seconds, epoch_seconds=epoch_seconds,
                           epochs_done=1, max_epochs=None)
        if fitted is None:
            return config.replace(eval_interval=interval), None
        self.max_epochs = config.epochs  # planned, not chosen: the refit may give back what the probe took
        return source.resolve(epochs=fitted["epochs"], eval_interval=interval), fitted

    def refit(self, config: TrainConfig, measured: EpochEstimate, test_share: float) -> dict | None:
        """After the first epoch: reserve time for the final evaluation (validation, and the test split
        ``test_share`` times the size of validation) and fit the schedule to the measured speed."""
        self.reserve = measured.eval_seconds * (1 + test_share) + FINISH_SECONDS
        self.eval_seconds, self.test_share = measured.eval_seconds, test_share
        return self.replan(config, measured.train_seconds, epochs_done=1)

    def observe_validation(self, seconds: float) -> None:
        """A later validation took ``seconds``: when that is faster than the first, whose time may have held
        one-off costs (compiling the model for evaluation, warming up kernels), the run keeps that much less
        for its final evaluation and counts that much less per validation from now on."""
        if seconds < self.eval_seconds:
            self.reserve -= (self.eval_seconds - seconds) * (1 + self.test_share)
            self.eval_seconds = seconds

    def replan(self, config: TrainConfig, train_seconds: float, epochs_done: int) -> dict | None:
        """After an epoch whose steps took ``train_seconds``: the epochs that fit, at the speed of the fastest
        of the last few epochs and of the probe (None: the planned epochs still fit)."""
        self.recent = (self.recent + [train_seconds + self.eval_seconds / config.eval_interval])[-RECENT_EPOCHS:]
        fastest = min(self.recent + ([self.probe_seconds] if self.probe_seconds else []))
        return self._fit(config, elapsed=self.elapsed() + self.reserve, epoch_seconds=fastest,
                         epochs_done=epochs_done, max_epochs=self.max_epochs)

    def state_dict(self) -> dict:
        return {"reserve": self.reserve, "recent": list(self.recent), "eval_seconds": self.eval_seconds,
                "probe_seconds": self.probe_seconds, "last_share": self.last_share, "test_share": self.test_share}

    def load_state_dict(self, state: dict) -> None:
        self.reserve = float(state.get("reserve", 0.0))
        self.recent = [float(v) for v in state.get("recent", [])]
        self.eval_seconds = float(state.get("eval_seconds", 0.0))
        self.probe_seconds = state.get("probe_seconds")
        self.last_share = float(state.get("last_share", 1.0))
        self.test_share = float(state.get("test_share", 0.0))


WARMUP_STEPS = 2  # untimed steps before the probe's timed ones
PROBE_TEXT_BATCHES = 4  # text batches of different lengths the probe times (see DeviceBatches.probe_batches)


def estimate_epoch_seconds(config: TrainConfig, data: ImageDataset | TextDataset, probe_steps: int = 10) -> EpochEstimate:
    """Seconds one epoch of ``config`` (training, and a validation pass) will take here: the fastest of a
    few timed training steps (the step the run takes: augmentation, mixing, teacher and all) on each probe
    batch, averaged over the probe batches, on a throwaway copy of the model; other load only slows steps
    down, and the refit after the first epoch corrects an optimistic plan. The global RNG is left untouched."""
    device = select_device(config.device)
    batches = DeviceBatches(data, config, device, DistInfo())
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        model = prepare_model(build_student(config.replace(pretrained=None), data, input_size(config, data)), device)
        augment, _ = transforms(config, data, model)
        teacher = load_teacher(config.teacher, device) if config.teacher else None
        tools = build_step_tools(model, config, num_classes=data.num_classes, steps_per_epoch=batches.steps_per_epoch,
                                 augment=augment, text=isinstance(data, TextDataset), teacher=teacher,
                                 amp_dtype=autocast_dtype(device, config.amp))
        probe = batches.probe_batches(PROBE_TEXT_BATCHES)
        model.train()
        for step in range(WARMUP_STEPS):
            train_step(model, probe[0], tools, step)
        repeats = max(1, (probe_steps - WARMUP_STEPS) // len(probe))
        fastest = []  # of each probe batch
        for index, batch in enumerate(probe):
            times = []
            for repeat in range(repeats):
                start = time.perf_counter()
                train_step(model, batch, tools, WARMUP_STEPS + index * repeats + repeat)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                times.append(time.perf_counter() - start)
            fastest.append(min(times))
    step_seconds = sum(fastest) / len(fastest)
    eval_steps = math.ceil(len(data.val) / batches.global_batch)
    # an inference batch costs about a third of a training step
    return EpochEstimate(batches.steps_per_epoch * step_seconds,
                         _validation_views(config) * eval_steps * step_seconds / 3)


def _validation_views(config: TrainConfig) -> int:
    """The views of each validation image that ``config``'s validation runs the model on."""
    return tta_view_count(config.uses_flip_tta, config.uses_shift_tta)
