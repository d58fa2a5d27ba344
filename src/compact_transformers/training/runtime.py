"""Device, precision and process-level tuning, decided once for a run (never inside model code)."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import os
import platform

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
