"""Device, precision and process-level tuning, decided once for a run (never inside model code)."""

from __future__ import annotations

import contextlib
import copy
import ctypes
import ctypes.util
import functools
import logging
import os
import platform
import time
from collections.abc import Callable

import torch

from ..errors import ConfigError

logger = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


def select_device(name: str = "auto") -> torch.device:
    """``auto`` = the local CUDA device if there is one (LOCAL_RANK under torchrun), else the CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}; expected auto, cpu, cuda, cuda:N or mps") from None
    if device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"unsupported device {name!r}; expected auto, cpu, cuda, cuda:N or mps")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but CUDA is not available; use --device cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device {name!r} requested but MPS (Apple GPU) is not available; use --device cpu")
    if device.type == "cuda" and device.index is None:  # under torchrun: this process's GPU
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return device


@functools.lru_cache(maxsize=None)
def cpu_has_fast_bf16() -> bool:
    """True when the CPU has native bf16 matmul (AVX512-BF16 or AMX), where bf16 autocast pays off."""
    if platform.system() != "Linux":
        return False
    try:
        with open("/proc/cpuinfo") as handle:
            flags = handle.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def autocast_dtype(device: torch.device, amp: bool) -> torch.dtype | None:
    """The mixed-precision dtype for ``device``: bf16 on capable CPUs and on Ampere+ GPUs, fp16 on older
    GPUs, None (full fp32) when ``amp`` is off or the hardware gains nothing."""
    if not amp:
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_has_fast_bf16():
        return torch.bfloat16
    return None


def tune_cpu(threads: int | None = None) -> dict:
    """Process-wide CPU settings that make training faster; call once at start-up, never on import.

    glibc returns every freed block above its mmap threshold to the kernel and page-faults it back on the
    next step; keeping freed memory in the heap (no mmap, large trim threshold) made matmuls up to 4x faster.
    """
    applied: dict = {}
    if threads is not None:
        torch.set_num_threads(threads)
    applied["threads"] = torch.get_num_threads()
    libc_name = ctypes.util.find_library("c")
    if platform.system() == "Linux" and libc_name:
        try:
            libc = ctypes.CDLL(libc_name)
            ok_mmap = libc.mallopt(_M_MMAP_MAX, 0)
            ok_trim = libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30)
            applied["mallopt"] = bool(ok_mmap and ok_trim)
        except (OSError, AttributeError):
            applied["mallopt"] = False
    return applied


def prepare_model(model: torch.nn.Module, device: torch.device, channels_last: bool = True) -> torch.nn.Module:
    """Move ``model`` to ``device`` in the fastest layout: channels-last (NHWC) convolutions make the
    tokenizer's max-pool much faster on CPU and its output is already token-major."""
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def prepare_input(images: torch.Tensor, channels_last: bool = True) -> torch.Tensor:
    """Images in the layout :func:`prepare_model` expects."""
    if channels_last and images.ndim == 4:
        return images.contiguous(memory_format=torch.channels_last)
    return images


# An evaluation expected to take longer than this in eager mode is compiled first: compiling CCT-7/3x1 took
# ~10 s on 2 AMX cores, and the compiled bf16 copy then ran 1.8x as fast as the autocast model.
COMPILE_WORTH_S = 30.0


def frozen_weights() -> contextlib.AbstractContextManager:
    """Inductor's freezing for what torch.compile compiles inside: weights folded in as constants, prepacked
    for oneDNN (inference only; the weights must not change afterwards)."""
    import torch._inductor.config as inductor_config

    return inductor_config.patch(freezing=True)


class LowPrecisionInference(torch.nn.Module):
    """An eval-only copy of an image model held in ``dtype`` (bf16), called on float images, returning float32
    logits: no autocast casts around every op (1.3x the inference speed of autocast for CCT-7/3x1 on an AMX CPU).

    :meth:`compile_for` wraps the copy in ``torch.compile`` with frozen weights (Inductor prepacks them for
    oneDNN and fuses the element-wise ops) for batches of one size; a smaller batch is padded to it so that
    nothing recompiles. If compiling fails (no C++ compiler, say), it says so once and runs eagerly.
    """

    def __init__(self, model: torch.nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.dtype = dtype
        self.network = copy.deepcopy(model).eval().requires_grad_(False).to(dtype)
        self.config = getattr(model, "config", None)
        self.compiled: torch.nn.Module | None = None
        self.batch_size: int | None = None

    def compile_for(self, batch_size: int) -> LowPrecisionInference:
        self.compiled, self.batch_size = torch.compile(self.network, dynamic=False), batch_size
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        count = images.shape[0]
        images = images.to(self.dtype)
        with torch.autocast(images.device.type, enabled=False):
            if self.compiled is not None and count <= self.batch_size:
                if count < self.batch_size:
                    images = torch.cat([images, images.new_zeros((self.batch_size - count,) + images.shape[1:])])
                try:
                    with frozen_weights():
                        return self.compiled(images)[:count].float()
                except Exception as error:  # noqa: BLE001 - any compiler failure: fall back to eager, say why
                    logger.warning("torch.compile failed (%s: %s); running eagerly",
                                   type(error).__name__, str(error).splitlines()[0] if str(error) else "")
                    self.compiled = None
                    images = images[:count]
            return self.network(images).float()


def inference_model(model: torch.nn.Module, first_batch: torch.Tensor, *, amp_dtype: torch.dtype | None,
                    batches: int) -> torch.nn.Module:
    """What runs image model ``model`` over ``batches`` batches like ``first_batch`` (a prepared float batch on
    the model's device), chosen by measurement: ``model`` itself (to be run under ``amp_dtype`` autocast, as
    training evaluates, so the figures equal the run's), unless timing it on ``first_batch`` on a CPU with bf16
    says the evaluation would take over ``COMPILE_WORTH_S``: then a compiled :class:`LowPrecisionInference`
    copy (its figures can differ from autocast's in the last digits), if it runs ``first_batch`` faster (on an AMX
    Xeon it ran CCT-7/3x1 1.8x as fast; on an AMD EPYC without AMX, where the model's own fused attention kernel
    runs in eager mode, it was slower: 176 against 200-215 img/s)."""
    if amp_dtype is None or first_batch.device.type != "cpu":
        return model
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), torch.autocast("cpu", dtype=amp_dtype):
            eager_s = _second_call_seconds(model, first_batch)  # the first creates the oneDNN primitives
    finally:
        model.train(was_training)  # also when the model rejects the batch
    if eager_s * batches <= COMPILE_WORTH_S:
        return model
    logger.info("evaluation expected to take %.0f s: compiling a bf16 copy of the model first", eager_s * batches)
    compiled = LowPrecisionInference(model, amp_dtype).compile_for(first_batch.shape[0])
    with torch.no_grad():
        compiled_s = _second_call_seconds(compiled, first_batch)  # the first compiles
    if compiled_s >= eager_s:
        logger.info("the compiled copy is not faster here (%.0f against %.0f ms a batch): evaluating the model as "
                    "training does", compiled_s * 1e3, eager_s * 1e3)
        return model
    return compiled


def _second_call_seconds(model: torch.nn.Module, batch: torch.Tensor) -> float:
    """Seconds of the second of two calls of ``model`` on ``batch`` (the first one builds what it caches)."""
    model(batch)
    start = time.perf_counter()
    model(batch)
    return time.perf_counter() - start


def make_infer_step(model: torch.nn.Module, images: torch.Tensor) -> Callable[[], None]:
    """One inference step of ``model`` on ``images`` by the path `cct eval` takes on a long evaluation
    (:func:`inference_model`'s choice): the hook `../shared/bench/speed_vs_official.py` times."""
    device = images.device
    model = prepare_model(model, device).eval()
    images = prepare_input(images)
    amp_dtype = autocast_dtype(device, amp=True)
    fast = inference_model(model, images, amp_dtype=amp_dtype, batches=10**6)  # a long evaluation

    def step() -> None:
        with torch.no_grad(), torch.autocast(device.type, dtype=amp_dtype or torch.float32,
                                             enabled=amp_dtype is not None and fast is model):
            fast(images)

    return step
