"""THE training step: augment, mix, forward (with a teacher), loss, backward, clip, optimizer, schedule.

`cct train`'s loop, the `--time-limit` probe and `cct bench` all call :func:`train_step`, so what the
probe times and what the bench measures is what training runs. A batch is of any modality: uint8
images (augmented on the device) or token ids with a padding mask.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

from ..augment import MixupCutmix, TextCutMix, TrainAugment, smooth_one_hot
from ..data.text import PAD
from .losses import DistillationLoss, SoftTargetCrossEntropy
from .optim import build_optimizer
from .recipe import TrainConfig
from .runtime import prepare_input
from .schedule import LRSchedule


@dataclass
class Batch:
    """One batch: uint8 images (B, C, H, W) or token ids (B, L) with ``mask`` (B, L) True on real tokens."""

    inputs: torch.Tensor
    labels: torch.Tensor
    mask: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.labels.shape[0]

    @classmethod
    def of_texts(cls, ids: torch.Tensor, lengths: torch.Tensor, labels: torch.Tensor,
                 longest: int | None = None) -> Batch:
        """A batch of right-padded token ids, cut to its longest text (see :func:`trim_to_longest`)."""
        ids, mask = trim_to_longest(ids, lengths, longest)
        return cls(ids, labels, mask)


def trim_to_longest(ids: torch.Tensor, lengths: torch.Tensor,
                    longest: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded token ids (B, L) cut to the batch's longest text, and their mask (True = a real token):
    short texts do not pay for the padding up to seq_len. ``longest``: that length when the caller knows it
    (reading it from ``lengths`` on a GPU waits for the GPU)."""
    if longest is None:
        longest = int(lengths.max()) if len(lengths) else 1
    longest = max(longest, 1)
    return ids[:, :longest], torch.arange(longest, device=ids.device)[None, :] < lengths[:, None]


@dataclass
class StepTools:
    """Everything a training step uses besides the model and the batch."""

    optimizer: torch.optim.Optimizer
    schedule: LRSchedule
    scaler: torch.amp.GradScaler
    criterion: nn.Module
    num_classes: int
    smoothing: float
    augment: nn.Module | None = None  # uint8 images -> normalised floats; None: inputs as they are
    mixer: MixupCutmix | TextCutMix | None = None  # Mixup/CutMix; `mixer.enabled = False` switches it off
    teacher: nn.Module | None = None  # hard distillation
    ema: nn.Module | None = None
    ema_decay: float = 0.9998
    clip_grad: float | None = None
    amp_dtype: torch.dtype | None = None
    channels_last: bool = True


@dataclass
class StepOutput:
    loss: torch.Tensor  # detached scalar
    logits: torch.Tensor  # detached float32 (B, K)
    lr: float


def build_step_tools(model: nn.Module, config: TrainConfig, *, num_classes: int, steps_per_epoch: int,
                     augment: nn.Module | None, text: bool = False, teacher: nn.Module | None = None,
                     amp_dtype: torch.dtype | None = None, channels_last: bool = True,
                     optimizer: torch.optim.Optimizer | None = None, optimizer_kernel: str = "fastest") -> StepTools:
    """The optimizer, schedule, loss, mixing and EMA of ``config`` for ``model`` (``config.batch_size`` is
    the global batch that the learning rate scales with). ``augment=None`` for inputs that need none;
    ``text``: batches of token ids (mixed by :class:`TextCutMix` when ``config.cutmix`` is on; Mixup is for
    images only); ``optimizer``: one built elsewhere (default: ``config``'s, with ``optimizer_kernel``)."""
    optimizer = optimizer if optimizer is not None else build_optimizer(model, config, kernel=optimizer_kernel)
    mixer: MixupCutmix | TextCutMix | None = None
    if text and config.cutmix > 0:
        mixer = TextCutMix(alpha=config.cutmix, prob=config.mixup_prob, label_smoothing=config.smoothing,
                           num_classes=num_classes, pad_id=PAD)
    elif isinstance(augment, TrainAugment) and (config.mixup > 0 or config.cutmix > 0):
        mixer = MixupCutmix(
            mixup_alpha=config.mixup, cutmix_alpha=config.cutmix, prob=config.mixup_prob,
            switch_prob=config.mixup_switch_prob, label_smoothing=config.smoothing, num_classes=num_classes,
        )  # fmt: skip
    criterion: nn.Module = SoftTargetCrossEntropy()
    if teacher is not None:
        criterion = DistillationLoss(criterion, config.distill_alpha)
    return StepTools(
        optimizer=optimizer,
        schedule=LRSchedule.from_config(optimizer, config, steps_per_epoch=steps_per_epoch),
        scaler=torch.amp.GradScaler(_device_type(model), enabled=amp_dtype == torch.float16),
        criterion=criterion, num_classes=num_classes, smoothing=config.smoothing, augment=augment, mixer=mixer,
        teacher=teacher, ema=make_ema(model) if config.model_ema else None, ema_decay=config.model_ema_decay,
        clip_grad=config.clip_grad, amp_dtype=amp_dtype, channels_last=channels_last,
    )  # fmt: skip


def train_step(model: nn.Module, batch: Batch, tools: StepTools, step: int) -> StepOutput:
    """One optimizer step on ``batch``; ``step`` is the global step index that sets the learning rate."""
    inputs, mask = batch.inputs if tools.augment is None else tools.augment(batch.inputs), batch.mask
    if tools.mixer is None:
        targets = smooth_one_hot(batch.labels, tools.num_classes, tools.smoothing)
    elif isinstance(tools.mixer, TextCutMix):
        inputs, mask, targets = tools.mixer(inputs, mask, batch.labels)
    else:
        inputs, targets = tools.mixer(inputs, batch.labels)
    inputs = prepare_input(inputs, channels_last=tools.channels_last)
    extra = () if mask is None else (mask,)
    lr = tools.schedule.step(step)
    with _autocast(inputs.device.type, tools.amp_dtype):
        logits = model(inputs, *extra).float()
        teacher_logits = () if tools.teacher is None else (tools.teacher(inputs, *extra).float(),)
    # not checked for NaN here: reading it would make the host wait for the device in every step (the loop
    # checks the running sum every few steps, loop.SYNC_EVERY)
    loss = tools.criterion(logits, targets, *teacher_logits)
    tools.optimizer.zero_grad(set_to_none=True)
    tools.scaler.scale(loss).backward()
    if tools.clip_grad is not None:
        tools.scaler.unscale_(tools.optimizer)
        nn.utils.clip_grad_norm_(model.parameters(), tools.clip_grad)
    tools.scaler.step(tools.optimizer)
    tools.scaler.update()
    if tools.ema is not None:
        update_ema(tools.ema, model, tools.ema_decay)
    return StepOutput(loss.detach(), logits.detach(), lr)


def _autocast(device_type: str, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Autocast to ``dtype``; none at all for None (so a step also runs on devices autocast does not know,
    such as the meta device of the tests)."""
    return contextlib.nullcontext() if dtype is None else torch.autocast(device_type, dtype=dtype)


def make_ema(model: nn.Module) -> nn.Module:
    """A frozen copy of ``model`` for the exponential moving average of its weights."""
    import copy

    ema = copy.deepcopy(model).eval()
    return ema.requires_grad_(False)


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    torch._foreach_lerp_(list(ema.parameters()), [p.detach() for p in model.parameters()], 1.0 - decay)
    for ema_buffer, buffer in zip(ema.buffers(), model.buffers()):
        ema_buffer.copy_(buffer)


def _device_type(model: nn.Module) -> str:
    return next(model.parameters()).device.type
