"""``cct bench``: training and inference throughput of the Compact Transformers on this machine.

For each model and batch size, every variant (a set of speed levers: precision, memory layout, attention
kernel, optimizer kernel, torch.compile) gets a training-step function (forward + backward + AdamW step) and
an inference function (eval forward under no_grad). The variants of one model are measured INTERLEAVED
(baseline, fast, baseline, fast ...) so that load from other processes on a shared machine hits all of them
alike; the reported time is the median over the repeats after warm-up, and speed-ups are ratios of medians
against the ``baseline`` variant, the paper's reference form (fp32, NCHW, explicit attention, plain AdamW).

Achieved TFLOP/s count 2 x MACs per image forward and 3 x that per training step. ``%peak`` is against the
model-shape peak: the rate at which this machine runs the model's own matrix multiplications (the token-major
linear layers and the per-head attention matmuls, forward and for training backward, recorded from a pass on
the meta device) back to back, measured in the same run; the square-matmul peak (torch.mm of n x n matrices,
the best of a size sweep) is reported beside it. Peak memory is the process's peak RSS during one step on CPU
(reset through /proc/self/clear_refs, read from VmHWM) and torch's peak allocation on CUDA; ``mem_delta_mb``
is that peak minus the memory in use just before the step.

A shared machine makes any of these numbers untrue; the run checks for the signs (a row above its peak, a
peak that moved between the start and the end of the run, repeats spread widely, a load average above the
threads the bench uses) and lists them as ``warnings`` (``--strict``: exit 1 when there are any).

``--modes latency``: p50/p90 milliseconds of one single-sample prediction as ``cct predict`` makes it, through
eager PyTorch, torch.compile and ONNX Runtime.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import ctypes
import ctypes.util
import datetime
import gc
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch

from .errors import ConfigError
from .fileio import atomic_write_text

if TYPE_CHECKING:
    from .training.step import Batch, StepTools

SCHEMA = "cct-bench/2"
DEFAULT_MODELS = ("cct_2_3x2_32:28x28x1", "cct_7_3x2_32:32x32x3", "cct_7_3x1_32:32x32x3")
THROUGHPUT_MODES = ("train", "infer")
MODES = (*THROUGHPUT_MODES, "latency")
LATENCY_PATHS = ("eager", "compile", "onnx")
# --latency-views: (flip_tta, shift_tta) of an image prediction with that many test-time views (augment.tta_views)
LATENCY_VIEWS = {1: (False, 0), 2: (True, 0), 6: (True, 1)}
# torch.compile modes of the variant suffixes: +cudagraphs is inductor with CUDA graphs (on CUDA only)
COMPILE_SUFFIXES = {"+compile": "default", "+cudagraphs": "reduce-overhead"}
# Signs of contention that make a run's numbers untrustworthy (see find_warnings).
PEAK_DRIFT_LIMIT = 0.15  # a peak that moved by more than this between the start and the end of the run
SPREAD_LIMIT = 0.20  # (max - min) / median of a row's timed repeats
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
CPU_FLAGS_OF_INTEREST = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile", "amx_int8")
_DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


# ----------------------------------------------------------------------------------------------- variants


@dataclass(frozen=True)
class Variant:
    """One combination of speed levers. ``amp``: autocast to the run's precision (``--precision``)."""

    name: str
    attn_impl: str  # "explicit" | "sdpa" | "auto" (explicit while training on a CPU, SDPA otherwise)
    channels_last: bool
    amp: bool
    recipe_optimizer: bool  # True: the fused AdamW of `cct train`; False: torch.optim.AdamW defaults
    description: str
    compile_mode: str | None = None  # torch.compile mode (see COMPILE_SUFFIXES); None: eager
    low_precision_weights: bool = False  # weights (and activations) in the run's precision, fp32 master copies

    @property
    def compile(self) -> bool:
        return self.compile_mode is not None


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("baseline", "explicit", False, False, False, "paper's reference form: fp32, NCHW, explicit attention"),
        Variant("fast", "auto", True, True, True,
                "the step `cct train` runs (training.step.train_step) as it runs it: autocast, channels-last, "
                "auto attention, fused AdamW"),
        # one lever at a time on top of the baseline
        Variant("fp32-cl", "explicit", True, False, False, "baseline + channels-last"),
        Variant("amp-nchw", "explicit", False, True, False, "baseline + mixed precision"),
        Variant("fp32-sdpa", "sdpa", False, False, False, "baseline + SDPA attention (training too)"),
        Variant("fp32-auto", "auto", False, False, False, "baseline + auto attention (SDPA but in CPU training)"),
        Variant("fp32-fused", "explicit", False, False, True, "baseline + the recipe's fused AdamW"),
        # two levers, and the fast path with SDPA in training as well
        Variant("amp-cl", "explicit", True, True, False, "mixed precision + channels-last"),
        Variant("fast-sdpa", "sdpa", True, True, True, "fast with SDPA in training too"),
        Variant("fast-explicit", "explicit", True, True, True, "fast with explicit attention in training and eval"),
        Variant("lp-weights", "auto", True, True, True,
                "fast with the model itself in bf16/fp16 (no autocast casts) and fp32 master weights",
                low_precision_weights=True),
    )
}


def resolve_variant(name: str) -> Variant:
    """A registered variant; the suffix ``+compile`` wraps it in torch.compile, ``+cudagraphs`` in
    torch.compile with CUDA graphs (mode reduce-overhead; on a CPU the same as +compile)."""
    base, mode = name, None
    for suffix, compile_mode in COMPILE_SUFFIXES.items():
        if name.endswith(suffix):
            base, mode = name[: -len(suffix)], compile_mode
    if base not in VARIANTS:
        raise ConfigError(f"unknown variant {name!r}; expected one of {', '.join(VARIANTS)} (optionally with "
                          f"{' or '.join(COMPILE_SUFFIXES)})")  # fmt: skip
    return replace(VARIANTS[base], name=name, compile_mode=mode) if mode else VARIANTS[base]


# ------------------------------------------------------------------------------------------------ config


# Text models are measured as the paper trains them: 300-d frozen word vectors of a 20k-word vocabulary.
TEXT_BENCH_VOCAB, TEXT_BENCH_WORD_DIM, TEXT_BENCH_SEQ_LEN = 20_000, 300, 128


@dataclass(frozen=True)
class ModelSpec:
    """A preset at an input shape: images ``name`` or ``name:HxWxC`` (e.g. ``cct_2_3x2_32:28x28x1``); text
    ``name`` or ``name:L`` (L tokens per text, e.g. ``text_cct_2_1x1:256``)."""

    name: str
    img_size: tuple[int, int] | None = None
    in_chans: int = 3
    seq_len: int | None = None

    @property
    def is_text(self) -> bool:
        return self.seq_len is not None

    @property
    def label(self) -> str:
        return f"L{self.seq_len}" if self.is_text else f"{self.img_size[0]}x{self.img_size[1]}x{self.in_chans}"

    @property
    def unit(self) -> str:
        """What one sample is: a text (seq) or an image (img)."""
        return "seq" if self.is_text else "img"

    def create(self, attn_impl: str = "auto") -> torch.nn.Module:
        from .models import create_model

        if self.is_text:  # no attention dropout: the text recipe's (it uses word dropout instead)
            return create_model(self.name, attn_impl=attn_impl, seq_len=self.seq_len, vocab_size=TEXT_BENCH_VOCAB,
                                word_dim=TEXT_BENCH_WORD_DIM, freeze_embedding=True, attn_dropout=0.0)
        return create_model(self.name, attn_impl=attn_impl, img_size=self.img_size, in_chans=self.in_chans)

    def example(self, batch_size: int, device: torch.device, uint8: bool = False) -> tuple[torch.Tensor, ...]:
        """Model inputs of a random batch: (token ids, mask) of full-length texts, or images (float, or uint8
        for the training step's augmentation)."""
        if self.is_text:
            ids = torch.randint(2, TEXT_BENCH_VOCAB, (batch_size, self.seq_len), device=device)
            return ids, torch.ones_like(ids, dtype=torch.bool)
        shape = (batch_size, self.in_chans, *self.img_size)
        if uint8:
            return (torch.randint(0, 256, shape, dtype=torch.uint8, device=device),)
        return (torch.randn(shape, device=device),)


def parse_model_spec(text: str) -> ModelSpec:
    """``name`` (the preset's own input shape), ``name:HxWxC`` for images or ``name:L`` for text."""
    from .models import get_preset

    name, _, shape = text.partition(":")
    preset = get_preset(name)
    if preset.kind == "text":
        if shape and not (shape.isdigit() and int(shape) > 0):
            raise ConfigError(f"model spec {text!r}: expected NAME or NAME:L (tokens per text), e.g. text_cct_2_1x1:256")
        return ModelSpec(preset.name, seq_len=int(shape) if shape else TEXT_BENCH_SEQ_LEN)
    if not shape:
        config = preset.build_config()
        return ModelSpec(preset.name, tuple(config.img_size), config.in_chans)
    parts = shape.lower().split("x")
    if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise ConfigError(
            f"model spec {text!r}: expected NAME or NAME:HxWxC with positive integers, e.g. cct_2_3x2_32:28x28x1"
        )
    height, width, chans = (int(p) for p in parts)
    return ModelSpec(preset.name, (height, width), chans)


def _option(default: object, help: str) -> object:
    """A BenchConfig field with its ``cct bench`` help text."""
    return field(default=default, metadata={"help": help})


@dataclass
class BenchConfig:
    """Every setting of a benchmark run; the defaults finish in a few minutes on a 2-core CPU. Each field is
    a ``cct bench`` option (``--batch-sizes 64,128``; lists are comma-separated)."""

    models: tuple[str, ...] = _option(DEFAULT_MODELS, "NAME or NAME:HxWxC, e.g. cct_2_3x2_32:28x28x1")
    batch_sizes: tuple[int, ...] = _option((128,), "batch sizes")
    variants: tuple[str, ...] = _option(("baseline", "fast"), "speed levers, 'all' for every one, suffix "
                                        "+compile or +cudagraphs to compile one: " + ", ".join(VARIANTS))
    modes: tuple[str, ...] = _option(THROUGHPUT_MODES, "train, infer, latency (batch-1 prediction); none with "
                                     "--time-to-accuracy or --scaling to run only those")
    precision: str = _option("auto", "dtype of the mixed-precision variants (auto: what cct train uses here): "
                             + ", ".join(PRECISIONS))
    compile: bool = _option(False, "add a torch.compile'd copy of every variant but the baseline")
    device: str = _option("auto", "auto, cpu, cuda, cuda:N")
    threads: int | None = _option(None, "CPU threads (none: torch's default)")
    warmup: int = _option(3, "untimed steps per variant; the second one measures peak memory")
    repeats: int = _option(5, "timed repeats per variant")
    steps: int | None = _option(None, "steps per timed repeat (none: 1 on CPU, 10 on CUDA)")
    peak_sizes: tuple[int, ...] | None = _option(None, "matmul sizes for the peak TFLOP/s (none: 512..2048 on "
                                                 "CPU, 2048..8192 on CUDA)")
    seed: int = _option(0, "random seed of the models and batches")
    # scaling: step time vs tokens and vs batch size, eval memory of SDPA vs explicit attention
    scaling: bool = _option(False, "also step time vs tokens and vs batch size, and attention memory")
    scaling_model: str = _option("cct_2_3x2_32", "model of the scaling measurements")
    scaling_sizes: tuple[int, ...] = _option((16, 32, 64), "input sizes in pixels for the scaling")
    scaling_batches: tuple[int, ...] = _option((32, 64, 128, 256, 512), "batch sizes for the scaling")
    # time to accuracy: a short training run
    time_to_accuracy: float | None = _option(None, "also train a model and report the time to this val top-1 (%%)")
    accuracy_model: str = _option("cct_2_3x2_32", "model of the time-to-accuracy run")
    accuracy_dataset: str = _option("fashion_mnist", "dataset of the time-to-accuracy run")
    accuracy_data: str | None = _option(None, "its folder (none: the dataset's default location)")
    accuracy_epochs: int = _option(5, "length of the time-to-accuracy run in epochs")
    accuracy_samples_per_class: int | None = _option(None, "train it on this many images per class")
    accuracy_output: str | None = _option(None, "keep its run directory in this folder")
    # latency: one sample at a time, as `cct predict` runs it
    latency_paths: tuple[str, ...] = _option(LATENCY_PATHS, "how --modes latency runs the model: "
                                             + ", ".join(LATENCY_PATHS))
    latency_samples: int = _option(100, "timed single-sample predictions per latency path")
    latency_warmup: int = _option(10, "untimed predictions per latency path first (the first one compiles)")
    latency_views: int = _option(1, "test-time views of an image per prediction: 1 (the model alone), 2 (and its "
                                 "mirror image), 6 (and both shifted a pixel: how cct predict runs a model of the "
                                 "small recipe)")

    def __post_init__(self) -> None:
        for name in ("batch_sizes", "scaling_sizes", "scaling_batches"):
            values = getattr(self, name)
            if not values or any(int(v) < 1 for v in values):
                raise ConfigError(f"{name} must be positive integers, got {list(values)}")
        if self.peak_sizes is not None and (not self.peak_sizes or any(int(v) < 1 for v in self.peak_sizes)):
            raise ConfigError(f"peak_sizes must be positive integers, got {list(self.peak_sizes)}")
        if not self.models:
            raise ConfigError("models: give at least one model")
        if not self.variants:
            raise ConfigError("variants: give at least one variant")
        for variant in self.variants:
            resolve_variant(variant)
        bad_modes = sorted(set(self.modes) - set(MODES))
        if bad_modes:
            raise ConfigError(f"modes must be a subset of {MODES}, got {list(self.modes)}")
        if not self.modes and self.time_to_accuracy is None and not self.scaling:
            raise ConfigError("modes: give train, infer or latency (none only with --time-to-accuracy or --scaling)")
        if self.scaling and not set(self.modes) & set(THROUGHPUT_MODES):
            raise ConfigError("scaling times the modes train and/or infer: add one of them to modes")
        bad_paths = sorted(set(self.latency_paths) - set(LATENCY_PATHS))
        if bad_paths or not self.latency_paths:
            raise ConfigError(f"latency_paths must be a non-empty subset of {LATENCY_PATHS}, "
                              f"got {list(self.latency_paths)}")  # fmt: skip
        if self.latency_views not in LATENCY_VIEWS:
            raise ConfigError(f"latency_views must be one of {list(LATENCY_VIEWS)}, got {self.latency_views}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        for name in ("warmup", "repeats", "steps", "threads", "accuracy_epochs", "latency_samples",
                     "latency_warmup"):  # (warmup: it measures memory)
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{name} must be >= 1, got {value}")
        if self.time_to_accuracy is not None and not 0 < self.time_to_accuracy <= 100:
            raise ConfigError(f"time_to_accuracy is a val top-1 in percent (0, 100], got {self.time_to_accuracy}")

    @property
    def throughput_modes(self) -> tuple[str, ...]:
        """The modes timed per variant (train, infer), without latency."""
        return tuple(m for m in self.modes if m in THROUGHPUT_MODES)

    def variant_list(self) -> list[Variant]:
        """The variants to run: the requested ones, then their compiled copies with ``compile``."""
        names = list(dict.fromkeys(self.variants))
        if self.compile:
            names += [f"{n}+compile" for n in names if n != "baseline" and not resolve_variant(n).compile]
        return [resolve_variant(n) for n in dict.fromkeys(names)]


# ------------------------------------------------------------------------------------------ the machine


def machine_info(device: torch.device) -> dict:
    """CPU model and flags of interest, threads, torch version, GPU name, date."""
    cpu_model, flags = None, set()
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and cpu_model is None:
                    cpu_model = value.strip()
                elif key.strip() == "flags" and not flags:
                    flags = set(value.split())
    except OSError:  # not Linux
        pass
    cpu_model = cpu_model or platform.processor() or "unknown"
    info = {
        "cpu": cpu_model,
        "cpu_flags": {flag: flag in flags for flag in CPU_FLAGS_OF_INTEREST},
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        # on a CPU shared with other processes, spinning OpenMP threads can stall each other badly
        "omp_env": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
                    if k in os.environ},
    }
    if hasattr(os, "getloadavg"):
        info["load_average_start"] = list(os.getloadavg())
    return info


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_matmul_peak(device: torch.device, sizes: tuple[int, ...], repeats: int = 5) -> dict[str, dict]:
    """Best TFLOP/s of torch.mm on n x n matrices per dtype (fp32, bf16, and fp16 on CUDA)."""
    dtypes = [torch.float32, torch.bfloat16] + ([torch.float16] if device.type == "cuda" else [])
    inner = 1 if device.type == "cpu" else 20  # one CUDA matmul is too short to time alone
    peaks: dict[str, dict] = {}
    for dtype in dtypes:
        by_size = {}
        for n in sizes:
            a = torch.randn(n, n, device=device).to(dtype)
            b = torch.randn(n, n, device=device).to(dtype)
            out = torch.mm(a, b)  # warm-up (and the output buffer)
            best = float("inf")
            for _ in range(repeats):
                _sync(device)
                start = time.perf_counter()
                for _ in range(inner):
                    torch.mm(a, b, out=out)
                _sync(device)
                best = min(best, (time.perf_counter() - start) / inner)
            by_size[str(n)] = 2 * n**3 / best / 1e12
            del a, b, out
        peaks[_DTYPE_NAMES[dtype]] = {"tflops": max(by_size.values()), "by_size": by_size}
    return peaks


# ------------------------------------------------------------------------------- the model-shape peak

_GEMM_OPS = ("mm", "addmm", "bmm", "baddbmm")


@dataclass(frozen=True)
class Gemm:
    """One matrix multiplication a model runs: the aten op and its tensor operands' shapes and strides (a
    backward matmul reads a transposed view, which BLAS runs differently from a contiguous matrix)."""

    op: str  # mm, addmm (bias first), bmm, baddbmm
    shapes: tuple[tuple[int, ...], ...]
    strides: tuple[tuple[int, ...], ...]

    @property
    def flops(self) -> int:
        a, b = self.shapes[-2], self.shapes[-1]
        batch = a[0] if len(a) == 3 else 1
        return 2 * batch * a[-2] * a[-1] * b[-1]

    @property
    def label(self) -> str:
        """``MxK@KxN``, with ``Bx`` in front for a batched matmul."""
        a, b = self.shapes[-2], self.shapes[-1]
        return (f"{a[0]}x" if len(a) == 3 else "") + f"{a[-2]}x{a[-1]}@{b[-2]}x{b[-1]}"


def model_gemms(spec: ModelSpec, batch_size: int, mode: str) -> dict[Gemm, int]:
    """The matmuls of one inference forward (``mode="infer"``) or one training forward + backward of ``spec``
    at ``batch_size``, with how often each runs: recorded from a pass on the meta device (nothing computed),
    attention in its explicit form (batched N x d @ d x N and N x N @ N x d per head, as FLOPs are counted)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Recorder(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.counts: dict[Gemm, int] = {}

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001 - torch's signature
            if func.overloadpacket.__name__ in _GEMM_OPS:
                tensors = [a for a in args if isinstance(a, torch.Tensor)]
                gemm = Gemm(func.overloadpacket.__name__, tuple(tuple(t.shape) for t in tensors),
                            tuple(tuple(t.stride()) for t in tensors))  # fmt: skip
                self.counts[gemm] = self.counts.get(gemm, 0) + 1
            return func(*args, **(kwargs or {}))

    with torch.device("meta"):
        model = spec.create("explicit")
    inputs = spec.example(batch_size, torch.device("meta"))
    model.train(mode == "train")
    recorder = Recorder()
    with recorder, torch.set_grad_enabled(mode == "train"):
        logits = model(*inputs)
        if mode == "train":
            logits.float().sum().backward()
    return recorder.counts


def _operand(shape: tuple[int, ...], stride: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A random tensor with this shape and these strides (a view of a flat buffer, as the model's are)."""
    size = 1 + sum((n - 1) * s for n, s in zip(shape, stride)) if all(shape) else 0
    return torch.randn(size, device=device).to(dtype).as_strided(shape, stride)


def _best_call_seconds(call: Callable[[], object], device: torch.device, repeats: int,
                       min_seconds: float = 2e-3) -> float:
    """The best seconds per call over ``repeats`` timings, each of enough calls to last ``min_seconds``."""
    call()  # warm-up (the first call on a GPU also sets up the BLAS library)
    once = _timed(call, device)
    count = max(1, math.ceil(min_seconds / max(once, 1e-9)))
    return min(_timed(call, device, count) / count for _ in range(repeats))


def measure_gemms(gemms: list[Gemm], dtype: torch.dtype, device: torch.device, repeats: int = 3) -> dict[Gemm, float]:
    """Best seconds per call of each matmul in ``dtype`` on ``device``."""
    seconds = {}
    for gemm in gemms:
        operands = [_operand(shape, stride, dtype, device) for shape, stride in zip(gemm.shapes, gemm.strides)]
        function = getattr(torch, gemm.op)
        seconds[gemm] = _best_call_seconds(lambda: function(*operands), device, repeats)
        del operands
    return seconds


def gemm_rate(counts: dict[Gemm, int], seconds: dict[Gemm, float]) -> float:
    """TFLOP/s of running every matmul of ``counts`` as often as the model does, back to back."""
    flops = sum(count * gemm.flops for gemm, count in counts.items())
    total = sum(count * seconds[gemm] for gemm, count in counts.items())
    return flops / total / 1e12 if total > 0 else 0.0


@dataclass
class ShapePlan:
    """The matmuls of every model x batch size x mode of a run, and the dtypes its variants compute in."""

    counts: dict[tuple[str, str, int, str], dict[Gemm, int]]  # (model, input, batch, mode) -> matmul counts
    dtypes: tuple[torch.dtype, ...]

    @property
    def gemms(self) -> list[Gemm]:
        return list(dict.fromkeys(g for counts in self.counts.values() for g in counts))


def shape_plan(config: BenchConfig, amp_dtype: torch.dtype | None) -> ShapePlan:
    """What :func:`measure_shape_plan` measures for ``config``'s models (nothing without throughput modes)."""
    counts = {}
    for spec in (parse_model_spec(m) for m in config.models):
        for batch_size in config.batch_sizes:
            for mode in config.throughput_modes:
                counts[(spec.name, spec.label, batch_size, mode)] = model_gemms(spec, batch_size, mode)
    variants = config.variant_list()
    dtypes = [torch.float32] if any(not v.amp or amp_dtype is None for v in variants) else []
    if amp_dtype is not None and any(v.amp for v in variants):
        dtypes.append(amp_dtype)
    return ShapePlan(counts, tuple(dtypes))


def measure_shape_plan(plan: ShapePlan, device: torch.device) -> dict[str, dict[Gemm, float]]:
    """Seconds per call of every matmul of ``plan`` in each of its dtypes, by dtype name."""
    gemms = plan.gemms
    return {_DTYPE_NAMES[dtype]: measure_gemms(gemms, dtype, device) if gemms else {} for dtype in plan.dtypes}


def model_peaks(plan: ShapePlan, start: dict[str, dict[Gemm, float]], end: dict[str, dict[Gemm, float]],
                largest: int = 4) -> list[dict]:
    """The model-shape peak of every model x batch x mode x dtype: the rate of its matmuls measured at the
    start and at the end of the run, and from each matmul's better time of the two (``tflops``: what %peak
    uses); with the ``largest`` matmuls by FLOPs and their own rates."""
    records = []
    for (model, label, batch_size, mode), counts in plan.counts.items():
        if not counts:
            continue
        total = sum(count * gemm.flops for gemm, count in counts.items())
        biggest = sorted(counts, key=lambda g: counts[g] * g.flops, reverse=True)[:largest]
        for dtype, start_seconds in start.items():
            best = {g: min(start_seconds[g], end[dtype][g]) for g in counts}
            records.append({
                "model": model, "input": label, "batch_size": batch_size, "mode": mode, "dtype": dtype,
                "tflops": gemm_rate(counts, best), "start_tflops": gemm_rate(counts, start_seconds),
                "end_tflops": gemm_rate(counts, end[dtype]), "gemm_flops": total,
                "gemms": [{"op": g.op, "shape": g.label, "count": counts[g], "flops_share": counts[g] * g.flops / total,
                           "tflops": g.flops / best[g] / 1e12} for g in biggest],
            })  # fmt: skip
    return records


# ---------------------------------------------------------------------------------------------- memory


def _read_status_kb(field_name: str) -> int | None:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _release_free_heap() -> None:
    """Return freed heap memory to the OS so that the next step's peak RSS is its own (see tune_cpu)."""
    gc.collect()
    libc_name = ctypes.util.find_library("c")
    if libc_name and platform.system() == "Linux":
        try:
            ctypes.CDLL(libc_name).malloc_trim(0)
        except (OSError, AttributeError):
            pass


def _reset_cpu_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")  # resets VmHWM to the current RSS
        return True
    except OSError:
        return False


def run_with_memory(step: Callable[[], None], device: torch.device) -> tuple[float, float | None, float | None]:
    """Run ``step`` once: (seconds, peak MB, peak minus the MB in use before it); memory None if unknown."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        seconds = _timed(step, device)
        peak = torch.cuda.max_memory_allocated(device)
        return seconds, peak / 2**20, (peak - before) / 2**20
    _release_free_heap()
    reset = _reset_cpu_peak()
    before = _read_status_kb("VmRSS")
    seconds = _timed(step, device)
    peak = _read_status_kb("VmHWM")
    if not reset or before is None or peak is None:
        return seconds, None, None
    return seconds, peak / 1024, (peak - before) / 1024


# -------------------------------------------------------------------------------------------- stepping


def _timed(step: Callable[[], None], device: torch.device, count: int = 1) -> float:
    _sync(device)
    start = time.perf_counter()
    for _ in range(count):
        step()
    _sync(device)
    return time.perf_counter() - start


def _amp_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    from .training.runtime import autocast_dtype

    if precision == "auto":
        return autocast_dtype(device, True)
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[precision]


def _compiled(model: torch.nn.Module, variant: Variant) -> torch.nn.Module:
    return torch.compile(model, mode=variant.compile_mode) if variant.compile else model


def _frozen_weights(variant: Variant) -> contextlib.AbstractContextManager:
    """For a compiled bf16-weights inference variant, Inductor's freezing (weights folded in as constants, prepacked for
    oneDNN), as `cct eval` compiles a long evaluation (`training.runtime.LowPrecisionInference`)."""
    from .training.runtime import frozen_weights

    if not (variant.compile and variant.low_precision_weights):  # under autocast, freezing broke a conv
        return contextlib.nullcontext()
    return frozen_weights()


def _mark_step(variant: Variant) -> None:
    """With CUDA graphs, tell torch that a new step begins (its graphs' outputs may be overwritten now)."""
    if variant.compile_mode == "reduce-overhead":
        torch.compiler.cudagraph_mark_step_begin()


@dataclass
class TrainParts:
    """What a training step of the bench is made of: the model, the batch and the step tools."""

    model: torch.nn.Module  # the model that owns the weights
    network: torch.nn.Module  # the model as the step calls it (compiled for the +compile variants)
    batch: Batch
    tools: StepTools


def build_train_parts(spec: ModelSpec, variant: Variant, batch_size: int, device: torch.device,
                      amp_dtype: torch.dtype | None, seed: int = 0) -> TrainParts:
    """The model, a fixed random batch and the step tools of ``spec``'s training step under ``variant``: for
    the ``fast`` variant what `cct train --recipe paper` builds (for a text model what `cct train` builds for
    text data: the text recipe), for the other variants the same with their levers."""
    from .augment import TrainAugment, WordDropout
    from .data.text import UNK
    from .training.build import make_augment_config
    from .training.optim import MasterWeightOptimizer
    from .training.recipe import TrainConfig, apply_recipe
    from .training.runtime import prepare_model
    from .training.step import Batch, build_step_tools

    torch.manual_seed(seed)
    model = prepare_model(spec.create(variant.attn_impl), device, channels_last=variant.channels_last)
    dtype = amp_dtype if variant.amp else None
    low_precision = variant.low_precision_weights and dtype is not None
    recipe = apply_recipe(TrainConfig(), "text", epochs=50) if spec.is_text else TrainConfig()
    recipe = recipe.replace(batch_size=batch_size)
    optimizer = MasterWeightOptimizer(model, recipe) if low_precision else None
    if low_precision:
        model = model.to(dtype)
    if spec.is_text:
        augment = WordDropout(recipe.word_dropout, UNK)
    else:  # as training.build.transforms makes it
        augment = TrainAugment(make_augment_config(recipe, spec.img_size, model.config.mean, model.config.std))
    tools = build_step_tools(
        model, recipe, num_classes=model.config.num_classes, steps_per_epoch=1000, amp_dtype=dtype,
        augment=augment, text=spec.is_text, channels_last=variant.channels_last, optimizer=optimizer,
        optimizer_kernel="fastest" if variant.recipe_optimizer else "plain",
    )  # fmt: skip
    inputs = spec.example(batch_size, device, uint8=True)
    labels = torch.randint(0, model.config.num_classes, (batch_size,), device=device)
    batch = Batch(inputs[0], labels, inputs[1] if spec.is_text else None)
    network = _compiled(model, variant)
    network.train()
    return TrainParts(model, network, batch, tools)


def build_step(spec: ModelSpec, variant: Variant, mode: str, batch_size: int, device: torch.device,
               amp_dtype: torch.dtype | None, seed: int = 0) -> Callable[[], None]:
    """A function that runs one training step (``mode="train"``) or one eval forward (``"infer"``) of
    ``spec`` under ``variant`` on a fixed random batch.

    Training is THE step of `cct train` (`training.step.train_step`) with the paper's recipe: on-device
    augmentation of uint8 images (RandAugment, crops, flips), Mixup/CutMix, label smoothing, AdamW and the
    learning-rate schedule; the variant sets precision, memory layout, attention and optimizer kernel."""
    from .training.runtime import prepare_input, prepare_model
    from .training.step import train_step

    if mode not in THROUGHPUT_MODES:
        raise ConfigError(f"mode must be one of {THROUGHPUT_MODES}, got {mode!r}")
    if mode == "train":
        parts = build_train_parts(spec, variant, batch_size, device, amp_dtype, seed)
        steps = iter(range(1 << 62))

        def step() -> None:
            _mark_step(variant)
            train_step(parts.network, parts.batch, parts.tools, next(steps))

        return step
    torch.manual_seed(seed)
    model = prepare_model(spec.create(variant.attn_impl), device, channels_last=variant.channels_last)
    dtype = amp_dtype if variant.amp else None
    inputs = spec.example(batch_size, device)
    if variant.low_precision_weights and dtype is not None:  # the model itself in low precision, no autocast casts
        inputs = tuple(x.to(dtype) if x.is_floating_point() else x for x in inputs)
        model, dtype = model.to(dtype), None
    network = _compiled(model, variant)
    network.eval()

    def infer_step() -> None:
        _mark_step(variant)
        with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None), \
                _frozen_weights(variant):
            network(prepare_input(inputs[0], channels_last=variant.channels_last), *inputs[1:])

    return infer_step


def step_settings(model: torch.nn.Module, tools: StepTools) -> dict:
    """What sets the speed and the arithmetic of a training step, as plain values: the model's attention
    kernels, layout, dtypes and dropout; precision, optimizer kernel and hyper-parameters, augmentation,
    mixing, loss, EMA, compilation. Equal settings mean the same step (the test that the bench's ``fast``
    variant is `cct train`'s step compares them); the data's normalisation and the schedule's length are
    left out."""
    from .models.layers import Attention, DropPath

    base = getattr(model, "_orig_mod", model)  # a torch.compile'd model's own
    optimizer = tools.optimizer
    inner = getattr(optimizer, "inner", optimizer)  # MasterWeightOptimizer wraps the real one
    augment, mixer = tools.augment, tools.mixer
    settings = {
        "compiled": base is not model,
        "model": type(base).__name__, "training": base.training,
        "attn_impl": sorted({m.impl for m in base.modules() if isinstance(m, Attention)}),
        "channels_last": sorted({p.is_contiguous(memory_format=torch.channels_last)
                                 for p in base.parameters() if p.ndim == 4}),
        "param_dtypes": sorted({str(p.dtype) for p in base.parameters()}),
        "dropout": sorted(m.p for m in base.modules() if isinstance(m, torch.nn.Dropout)),
        "drop_path": sorted(m.drop_prob for m in base.modules() if isinstance(m, DropPath)),
        "amp_dtype": str(tools.amp_dtype), "input_channels_last": tools.channels_last,
        "grad_scaler": tools.scaler.is_enabled(),
        "optimizer": type(optimizer).__name__, "optimizer_kernel": type(inner).__name__,
        "optimizer_defaults": dict(sorted(inner.defaults.items())),
        "param_groups": [(len(g["params"]), g["weight_decay"]) for g in inner.param_groups],
        "schedule": type(tools.schedule).__name__,
        "criterion": type(tools.criterion).__name__, "num_classes": tools.num_classes, "smoothing": tools.smoothing,
        "augment": None if augment is None else type(augment).__name__,
        "augment_config": ({k: v for k, v in asdict(augment.config).items() if k not in ("mean", "std")}
                           if hasattr(augment, "config") else getattr(augment, "p", None)),
        "mixer": None if mixer is None else {"kind": type(mixer).__name__, **{k: getattr(mixer, k, None) for k in (
            "mixup_alpha", "cutmix_alpha", "prob", "switch_prob", "label_smoothing", "enabled")}},
        "teacher": tools.teacher is not None, "ema": tools.ema is not None, "clip_grad": tools.clip_grad,
    }  # fmt: skip
    return json.loads(json.dumps(settings, default=str))  # tuples -> lists


@dataclass
class Measurement:
    """Seconds per step of each timed repeat, the first warm-up step (compile time shows here) and memory."""

    times_s: list[float]
    first_step_s: float
    peak_mem_mb: float | None
    mem_delta_mb: float | None

    @property
    def median_s(self) -> float:
        return statistics.median(self.times_s)


def measure_interleaved(steps: dict[str, Callable[[], None]], device: torch.device, warmup: int, repeats: int,
                        steps_per_repeat: int = 1) -> dict[str, Measurement]:
    """Warm up and time every step function in turn (a, b, a, b ...).

    The second warm-up round (the only one if ``warmup`` is 1) measures peak memory: after the first round's
    one-time costs (compilation, optimizer state), and before further rounds, which refill the heap that
    the memory measurement gave back to the OS so that the timed steps do not pay for page faults.
    """
    first: dict[str, float] = {}
    memory = {}
    memory_round = min(1, warmup - 1)
    for round_index in range(warmup):
        for name, step in steps.items():
            if round_index == memory_round:
                seconds, peak, delta = run_with_memory(step, device)
                memory[name] = (peak, delta)
            else:
                seconds = _timed(step, device)
            first.setdefault(name, seconds)
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            times[name].append(_timed(step, device, steps_per_repeat) / steps_per_repeat)
    return {name: Measurement(times[name], first[name], *memory[name]) for name in steps}


# ---------------------------------------------------------------------------------------------- running


def _macs(spec: ModelSpec) -> int:
    from .models.complexity import count_macs

    with torch.device("meta"):
        model = spec.create()
    inputs = spec.example(1, torch.device("meta"))
    return count_macs(model, inputs[0])  # a text model masks nothing in full-length texts


def _record(spec: ModelSpec, variant: Variant, mode: str, batch_size: int, macs: int, result: Measurement,
            amp_dtype: torch.dtype | None) -> dict:
    compute_dtype = amp_dtype if variant.amp and amp_dtype is not None else torch.float32
    precision = _DTYPE_NAMES[compute_dtype]
    flops_per_image = 2 * macs * (3 if mode == "train" else 1)
    return {
        "model": spec.name, "input": spec.label, "batch_size": batch_size, "mode": mode, "variant": variant.name,
        "precision": precision, "channels_last": variant.channels_last, "attn_impl": variant.attn_impl,
        "fused_optimizer": variant.recipe_optimizer, "compiled": variant.compile,
        "compile_mode": variant.compile_mode, "macs_per_image": macs,
        "median_s": result.median_s, "min_s": min(result.times_s), "times_s": result.times_s,
        "spread": (max(result.times_s) - min(result.times_s)) / result.median_s if result.median_s > 0 else 0.0,
        "first_step_s": result.first_step_s, "unit": spec.unit, "samples_per_s": batch_size / result.median_s,
        **({} if spec.is_text else {"img_per_s": batch_size / result.median_s}),
        "tflops": flops_per_image * batch_size / result.median_s / 1e12,
        "peak_mem_mb": result.peak_mem_mb, "mem_delta_mb": result.mem_delta_mb,
    }  # fmt: skip


def _speedups(records: list[dict]) -> list[dict]:
    """fast/baseline style ratios: baseline median time over each variant's, per model, batch and mode."""
    baselines = {(r["model"], r["input"], r["batch_size"], r["mode"]): r for r in records if r["variant"] == "baseline"}
    out = []
    for record in records:
        base = baselines.get((record["model"], record["input"], record["batch_size"], record["mode"]))
        if base is None or record is base:
            continue
        out.append({
            "model": record["model"], "input": record["input"], "batch_size": record["batch_size"],
            "mode": record["mode"], "variant": record["variant"], "speedup": base["median_s"] / record["median_s"],
        })  # fmt: skip
    return out


def _say(message: str, quiet: bool) -> None:
    if not quiet:
        print(message, file=sys.stderr, flush=True)


def bench_models(config: BenchConfig, device: torch.device, quiet: bool = False) -> list[dict]:
    """Throughput records of every model x batch size x mode x variant, variants measured interleaved."""
    amp_dtype = _amp_dtype(config.precision, device)
    steps_per_repeat = config.steps or (1 if device.type == "cpu" else 10)
    variants = config.variant_list()
    records = []
    for spec in (parse_model_spec(m) for m in config.models):
        macs = _macs(spec)
        for batch_size in config.batch_sizes:
            for mode in config.throughput_modes:
                _say(f"bench: {spec.name} {spec.label} batch {batch_size} {mode}: "
                     f"{', '.join(v.name for v in variants)}", quiet)  # fmt: skip
                steps = {
                    v.name: build_step(spec, v, mode, batch_size, device, amp_dtype, config.seed) for v in variants
                }
                results = measure_interleaved(steps, device, config.warmup, config.repeats, steps_per_repeat)
                for variant in variants:
                    records.append(_record(spec, variant, mode, batch_size, macs, results[variant.name], amp_dtype))
                del steps, results
                gc.collect()
    return records


def bench_scaling(config: BenchConfig, device: torch.device, quiet: bool = False) -> dict:
    """The fast variant's step time vs tokens and vs batch size; eval peak memory of SDPA vs explicit attention."""
    from .models import create_model

    amp_dtype = _amp_dtype(config.precision, device)
    steps_per_repeat = config.steps or (1 if device.type == "cpu" else 10)
    fast = VARIANTS["fast"]
    batch_size = config.batch_sizes[0]
    base = parse_model_spec(config.scaling_model)

    def time_one(spec: ModelSpec, mode: str, batch: int) -> Measurement:
        step = build_step(spec, fast, mode, batch, device, amp_dtype, config.seed)
        return measure_interleaved({"fast": step}, device, config.warmup, config.repeats, steps_per_repeat)["fast"]

    tokens_rows, batch_rows, memory_rows = [], [], []
    for size in config.scaling_sizes:
        spec = replace(base, img_size=(size, size))
        tokens = create_model(spec.name, img_size=spec.img_size, in_chans=spec.in_chans).num_tokens
        _say(f"bench scaling: {spec.name} {spec.label} ({tokens} tokens) batch {batch_size}", quiet)
        for mode in config.throughput_modes:
            result = time_one(spec, mode, batch_size)
            tokens_rows.append({"input": spec.label, "tokens": tokens, "batch_size": batch_size, "mode": mode,
                                "median_s": result.median_s, "img_per_s": batch_size / result.median_s})
        infer_steps = {
            impl: build_step(spec, replace(fast, name=impl, attn_impl=impl), "infer", batch_size, device, amp_dtype,
                             config.seed)
            for impl in ("sdpa", "explicit")
        }  # fmt: skip
        measured = measure_interleaved(infer_steps, device, warmup=2, repeats=1)
        for impl, result in measured.items():
            memory_rows.append({"input": spec.label, "tokens": tokens, "batch_size": batch_size, "attn_impl": impl,
                                "peak_mem_mb": result.peak_mem_mb, "mem_delta_mb": result.mem_delta_mb})
    spec = base
    for batch in config.scaling_batches:
        _say(f"bench scaling: {spec.name} {spec.label} batch {batch}", quiet)
        for mode in config.throughput_modes:
            result = time_one(spec, mode, batch)
            batch_rows.append({"input": spec.label, "batch_size": batch, "mode": mode, "median_s": result.median_s,
                               "img_per_s": batch / result.median_s})
    return {"model": base.name, "variant": "fast", "tokens": tokens_rows, "batch": batch_rows,
            "attention_memory": memory_rows}


# ---------------------------------------------------------------------------------------------- latency


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of ``values``, linearly interpolated between the nearest ranks."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _predict_call(model: torch.nn.Module, spec: ModelSpec, device: torch.device,
                  views: int = 1) -> Callable[[], torch.Tensor]:
    """One single-sample prediction as `cct predict` makes it, from a decoded uint8 image (a text's token ids)
    on the CPU to class probabilities on the CPU: the eval transform, channels-last input, autocast to the
    device's mixed-precision dtype, no_grad, the test-time ``views`` of an image (``LATENCY_VIEWS``), softmax.
    ``model`` is prepared (device, layout, eval) already."""
    from .augment import EvalTransform
    from .augment import tta_logits
    from .training.metrics import predict_text_logits
    from .training.runtime import autocast_dtype, prepare_input

    amp = autocast_dtype(device, True)
    if spec.is_text:
        ids = torch.randint(2, TEXT_BENCH_VOCAB, (1, spec.seq_len))
        lengths = torch.tensor([spec.seq_len])

        def predict_text() -> torch.Tensor:
            logits = predict_text_logits(model, ids.to(device), lengths.to(device), autocast=amp)
            return logits.softmax(dim=1).cpu()

        return predict_text
    transform = EvalTransform.for_model(model.config)  # as `cct predict`
    image = torch.randint(0, 256, (1, spec.in_chans, *spec.img_size), dtype=torch.uint8)
    flip_tta, shift_tta = LATENCY_VIEWS[views]

    def predict_image() -> torch.Tensor:
        batch = prepare_input(transform(image.to(device)))
        with torch.no_grad(), torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            return tta_logits(model, batch, flip_tta=flip_tta, shift_tta=shift_tta).softmax(dim=1).cpu()

    return predict_image


@dataclass
class LatencyModels:
    """The model of each latency path with the device it runs on; a note for each path that cannot run here."""

    models: dict[str, tuple[torch.nn.Module, torch.device]]
    notes: dict[str, str]
    export_s: float | None = None  # seconds the ONNX export (with its check against onnxruntime) took


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def _latency_models(spec: ModelSpec, paths: tuple[str, ...], device: torch.device, folder: Path,
                    seed: int) -> LatencyModels:
    """The models of the latency ``paths`` (compile errors show at the first call, and are noted there)."""
    from .training.runtime import prepare_model

    torch.manual_seed(seed)
    reference = spec.create().eval()  # one set of weights for every path
    found = LatencyModels({}, {})
    eager = prepare_model(copy.deepcopy(reference), device).eval()
    if "eager" in paths:
        found.models["eager"] = (eager, device)
    if "compile" in paths:
        found.models["compile"] = (torch.compile(eager), device)
    if "onnx" in paths:
        from .integrations.export import export_onnx, load_onnx

        cpu = torch.device("cpu")
        try:
            started = time.perf_counter()
            path = export_onnx(reference, folder / f"{spec.name}.onnx")
            found.export_s = time.perf_counter() - started
            found.models["onnx"] = (prepare_model(load_onnx(path), cpu).eval(), cpu)
        except ConfigError as error:  # onnxruntime or onnxscript missing: the message names the extra
            found.notes["onnx"] = f"skipped: {_first_line(error)}"
        except Exception as error:  # noqa: BLE001 - any export failure skips this path, the bench goes on
            found.notes["onnx"] = f"skipped: ONNX export failed: {type(error).__name__}: {_first_line(error)}"
    return found


def bench_latency(config: BenchConfig, device: torch.device, quiet: bool = False) -> list[dict]:
    """p50/p90 milliseconds of one single-sample prediction (batch 1, `cct predict`'s path) of each model
    through each of ``latency_paths``: eager PyTorch, torch.compile (mode default) and ONNX Runtime (on the
    CPU, as `cct predict model.onnx` runs it). The paths are timed interleaved, one call each in turn."""
    records = []
    for spec in (parse_model_spec(m) for m in config.models):
        _say(f"bench latency: {spec.name} {spec.label}: {', '.join(config.latency_paths)}", quiet)
        with tempfile.TemporaryDirectory(prefix="cct-bench-") as folder:
            found = _latency_models(spec, config.latency_paths, device, Path(folder), config.seed)
            devices = {path: on for path, (_, on) in found.models.items()}
            calls = {path: _predict_call(model, spec, on, config.latency_views)
                     for path, (model, on) in found.models.items()}
            first: dict[str, float] = {}
            for path in list(calls):
                try:
                    first[path] = _timed(calls[path], devices[path])
                    for _ in range(config.latency_warmup - 1):
                        calls[path]()
                except Exception as error:  # noqa: BLE001 - torch.compile fails on some set-ups: note it, go on
                    found.notes[path] = f"skipped: {type(error).__name__}: {_first_line(error)}"
                    del calls[path]
            times: dict[str, list[float]] = {path: [] for path in calls}
            for _ in range(config.latency_samples):
                for path, call in calls.items():
                    times[path].append(_timed(call, devices[path]))
        eager_p50 = percentile(times["eager"], 50) if "eager" in times else None
        for path in config.latency_paths:
            record = {"model": spec.name, "input": spec.label, "batch_size": 1, "path": path,
                      "views": 1 if spec.is_text else config.latency_views,
                      "device": str(devices[path]) if path in devices else None}  # fmt: skip
            if path in times:
                p50 = percentile(times[path], 50)
                record.update(
                    p50_ms=1e3 * p50, p90_ms=1e3 * percentile(times[path], 90), min_ms=1e3 * min(times[path]),
                    mean_ms=1e3 * statistics.fmean(times[path]), samples=len(times[path]), first_call_s=first[path],
                    speedup_vs_eager=eager_p50 / p50 if eager_p50 else None, skipped=False, note=None,
                    **({"export_s": found.export_s} if path == "onnx" else {}),
                )  # fmt: skip
            else:
                record.update(skipped=True, note=found.notes.get(path, "skipped"))
            records.append(record)
        del found, calls
        gc.collect()
    return records


# ------------------------------------------------------------------------------------- time to accuracy


class _MetricsWatcher(threading.Thread):
    """Stamps the wall time at which each line of a growing metrics.jsonl first appears."""

    def __init__(self, path: Path, interval: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.path, self.interval = path, interval
        self.start_time = time.monotonic()
        self.stamps: list[float] = []
        self._stop_event = threading.Event()

    def poll(self) -> None:
        try:
            lines = [line for line in self.path.read_text().splitlines() if line.strip()]
        except OSError:
            return
        now = time.monotonic() - self.start_time
        self.stamps += [now] * max(0, len(lines) - len(self.stamps))

    def run(self) -> None:
        while not self._stop_event.wait(self.interval):
            self.poll()

    def stop(self) -> None:
        self._stop_event.set()
        self.join()
        self.poll()


def first_reaching(history: list[dict], stamps: list[float], target: float) -> dict:
    """The first epoch record with val_top1 >= target: its epoch, wall seconds since the start of the run,
    and training seconds (sum of epoch_seconds, evaluation excluded) up to it."""
    train_seconds = 0.0
    for index, record in enumerate(history):
        train_seconds += record.get("epoch_seconds", 0.0)
        if record.get("val_top1", -1.0) >= target:
            wall = stamps[index] if index < len(stamps) else None
            return {"reached": True, "epoch": record["epoch"], "seconds": wall, "train_seconds": train_seconds}
    return {"reached": False, "epoch": None, "seconds": None, "train_seconds": None}


def bench_time_to_accuracy(config: BenchConfig, device: torch.device, quiet: bool = False) -> dict:
    """Train ``accuracy_model`` on ``accuracy_dataset`` with the short-run recipe and report when val top-1 first
    reached ``time_to_accuracy`` (wall time from the start of the run, data loading included)."""
    from .training.loop import train
    from .training.rundir import METRICS_FILE, read_history
    from .training.recipe import TrainConfig, apply_recipe

    target = config.time_to_accuracy
    train_config = apply_recipe(
        TrainConfig(model=config.accuracy_model, dataset=config.accuracy_dataset, data=config.accuracy_data,
                    samples_per_class=config.accuracy_samples_per_class, device=str(device), quiet=True, seed=config.seed),
        "small", epochs=config.accuracy_epochs,
    )  # fmt: skip
    _say(f"bench time-to-accuracy: {config.accuracy_model} on {config.accuracy_dataset} to {target}% in at most "
         f"{config.accuracy_epochs} epochs", quiet)  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="cct-bench-") as scratch:
        parent = Path(config.accuracy_output) if config.accuracy_output else Path(scratch)
        parent.mkdir(parents=True, exist_ok=True)
        run_dir = parent / f"accuracy-{datetime.datetime.now():%Y%m%d-%H%M%S}"
        watcher = _MetricsWatcher(run_dir / METRICS_FILE)
        watcher.start()
        try:
            result = train(train_config, run_dir=run_dir)
        finally:
            watcher.stop()
        total = time.monotonic() - watcher.start_time
        history = read_history(run_dir)
    reached = first_reaching(history, watcher.stamps, target)
    return {
        "target_top1": target, "model": config.accuracy_model, "dataset": config.accuracy_dataset,
        "epochs": config.accuracy_epochs, "samples_per_class": config.accuracy_samples_per_class, **reached,
        "best_val_top1": result.best_top1, "total_seconds": total,
        "run_dir": str(run_dir) if config.accuracy_output else None,
        "history": [{"epoch": r["epoch"], "val_top1": r.get("val_top1"), "epoch_seconds": r.get("epoch_seconds"),
                     "wall_s": watcher.stamps[i] if i < len(watcher.stamps) else None} for i, r in enumerate(history)],
    }  # fmt: skip


# ---------------------------------------------------------------------------------------------- the run


def run_benchmark(config: BenchConfig, quiet: bool = False) -> dict:
    """Run the whole benchmark and return the report (the JSON written by ``cct bench --output``)."""
    from .training.runtime import select_device

    device = select_device(config.device)
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"bench supports cpu and cuda devices, got {device}")
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    report: dict = {"schema": SCHEMA, "machine": machine_info(device), "settings": _settings(config, device)}
    # the peaks are measured before and after the models, and the better one counts: on a shared machine a
    # single measurement can land in a burst of load (and a large difference says the machine was shared)
    sizes = tuple(config.peak_sizes or ((512, 1024, 2048) if device.type == "cpu" else (2048, 4096, 8192)))
    plan = shape_plan(config, _amp_dtype(config.precision, device))
    _say(f"bench: matmul peaks on {device}: square ({', '.join(map(str, sizes))}) and the models' own "
         f"{len(plan.gemms)} matmul shapes", quiet)  # fmt: skip
    peak_start, shapes_start = measure_matmul_peak(device, sizes), measure_shape_plan(plan, device)
    report["results"] = bench_models(config, device, quiet) if config.throughput_modes else []
    if "latency" in config.modes:
        report["latency"] = bench_latency(config, device, quiet)
    peak_end, shapes_end = measure_matmul_peak(device, sizes), measure_shape_plan(plan, device)
    report["matmul_peak"] = {
        dtype: {"tflops": max(peak_start[dtype]["tflops"], peak_end[dtype]["tflops"]),
                "start": peak_start[dtype], "end": peak_end[dtype]}
        for dtype in peak_start
    }  # fmt: skip
    report["model_peak"] = model_peaks(plan, shapes_start, shapes_end)
    _attach_peaks(report)
    report["speedups"] = _speedups(report["results"])
    if config.scaling:
        report["scaling"] = bench_scaling(config, device, quiet)
    if config.time_to_accuracy is not None:
        report["time_to_accuracy"] = bench_time_to_accuracy(config, device, quiet)
    if hasattr(os, "getloadavg"):
        report["machine"]["load_average_end"] = list(os.getloadavg())
    report["warnings"] = find_warnings(report)
    return report


def _attach_peaks(report: dict) -> None:
    """Each row's peak: its model-shape peak in its compute dtype (``peak_*``), and the square-matmul peak
    (``square_peak_*``); each model-shape peak's share of the row's counted FLOPs that are matmuls."""
    peaks = {(p["model"], p["input"], p["batch_size"], p["mode"], p["dtype"]): p for p in report["model_peak"]}
    for record in report["results"]:
        key = (record["model"], record["input"], record["batch_size"], record["mode"], record["precision"])
        model_peak = peaks.get(key)
        square = report["matmul_peak"].get(record["precision"], {}).get("tflops")
        peak = model_peak["tflops"] if model_peak else None
        record["peak_tflops"] = peak
        record["peak_fraction"] = record["tflops"] / peak if peak else None
        record["square_peak_tflops"] = square
        record["square_peak_fraction"] = record["tflops"] / square if square else None
        if model_peak is not None:
            flops = 2 * record["macs_per_image"] * (3 if record["mode"] == "train" else 1) * record["batch_size"]
            model_peak["gemm_share"] = model_peak["gemm_flops"] / flops


def _drift(start: float, end: float) -> float:
    """How far a peak moved between the start and the end of the run, relative to the start."""
    return abs(end - start) / start if start > 0 else 0.0


def _row_label(record: dict) -> str:
    return f"{record['model']} {record['input']} batch {record['batch_size']} {record['mode']} {record['variant']}"


def _row_problems(record: dict) -> list[tuple[str, str]]:
    """(kind, message) of what makes a result row untrustworthy."""
    problems = []
    times = record["times_s"]
    spread = (max(times) - min(times)) / record["median_s"] if record["median_s"] > 0 else 0.0
    if spread > SPREAD_LIMIT:
        problems.append(("spread", f"{_row_label(record)}: its {len(times)} repeats spread by {100 * spread:.0f}% of "
                                   f"their median ((max - min) / median above {100 * SPREAD_LIMIT:.0f}%)"))
    fraction = record.get("peak_fraction")
    if fraction is not None and fraction > 1.0:
        problems.append(("above_peak", f"{_row_label(record)}: {100 * fraction:.0f}% of its {record['precision']} "
                                       "model-shape peak: the peak was measured while the machine was busier"))
    return problems


def find_warnings(report: dict) -> list[dict]:
    """Signs that a run's numbers are not this machine's true speed: ``{"kind", "message"}`` for a load
    average above the threads the bench uses (start or end), a peak that moved by more than PEAK_DRIFT_LIMIT
    between the start and the end, a row whose repeats spread by more than SPREAD_LIMIT, a row above 100% of
    its peak."""
    found = []
    machine = report["machine"]
    threads = machine["threads"]
    for when in ("start", "end"):
        load = machine.get(f"load_average_{when}")
        if load is not None and load[0] > threads:
            found.append({"kind": "load", "message": f"1-minute load average {load[0]:.2f} at the {when} of the run, "
                          f"above the {threads} thread(s) the bench uses: other processes competed for the cores"})
    for dtype, peak in report.get("matmul_peak", {}).items():
        start, end = peak["start"]["tflops"], peak["end"]["tflops"]
        if _drift(start, end) > PEAK_DRIFT_LIMIT:
            found.append({"kind": "peak_drift", "message": f"the {dtype} square-matmul peak moved by "
                          f"{100 * _drift(start, end):.0f}% between the start ({start:.3f} TFLOP/s) and the end "
                          f"({end:.3f}) of the run"})  # fmt: skip
    for peak in report.get("model_peak", []):
        start, end = peak["start_tflops"], peak["end_tflops"]
        if _drift(start, end) > PEAK_DRIFT_LIMIT:
            found.append({"kind": "peak_drift", "message": f"the {peak['dtype']} model-shape peak of {peak['model']} "
                          f"{peak['input']} batch {peak['batch_size']} {peak['mode']} moved by "
                          f"{100 * _drift(start, end):.0f}% between the start ({start:.3f} TFLOP/s) and the end "
                          f"({end:.3f}) of the run"})  # fmt: skip
    for record in report.get("results", []):
        found += [{"kind": kind, "message": message} for kind, message in _row_problems(record)]
    return found


def _settings(config: BenchConfig, device: torch.device) -> dict:
    settings = asdict(config)
    amp_dtype = _amp_dtype(config.precision, device)
    settings["amp_dtype"] = _DTYPE_NAMES[amp_dtype] if amp_dtype is not None else "fp32"
    settings["steps_per_repeat"] = config.steps or (1 if device.type == "cpu" else 10)
    settings["variant_descriptions"] = {v.name: v.description for v in config.variant_list()}
    settings["peak_fraction_of"] = "model-shape peak (model_peak): the model's own matmuls in the row's dtype"
    settings["command"] = " ".join(sys.argv)
    return json.loads(json.dumps(settings))  # tuples -> lists


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _percent(value: float | None) -> str:
    return _fmt(None if value is None else 100 * value, ".1f")


def format_report(report: dict) -> str:
    """The report as plain-text tables; its warnings first, each line starting with UNRELIABLE."""
    machine = report["machine"]
    flags = ", ".join(f for f, on in machine["cpu_flags"].items() if on) or "none"
    peaks = ", ".join(f"{k} {v['tflops']:.3f} (start {v['start']['tflops']:.3f}, end {v['end']['tflops']:.3f})"
                      for k, v in report["matmul_peak"].items())  # fmt: skip
    warnings = report.get("warnings", [])
    lines = [
        f"{machine['cpu']} ({flags}); {machine['threads']} threads; torch {machine['torch']}; "
        f"device {machine['device']}{' ' + machine['gpu'] if machine['gpu'] else ''}; {machine['date']}",
        f"square-matmul peak TFLOP/s: {peaks}",
    ]
    lines += [f"UNRELIABLE: {w['message']}" for w in warnings]
    if report.get("model_peak"):
        lines += ["", "model-shape peak TFLOP/s: the model's own matmuls back to back (%peak is against it; %sq "
                      "against the square-matmul peak)"]  # fmt: skip
        for p in report["model_peak"]:
            largest = p["gemms"][0]
            lines.append(
                f"  {p['model']:<14} {p['input']:<8} batch {p['batch_size']:>4} {p['mode']:<5} {p['dtype']:<4} "
                f"{p['tflops']:>8.4f} (start {p['start_tflops']:.4f}, end {p['end_tflops']:.4f}); matmuls "
                f"{_percent(p.get('gemm_share'))}% of the FLOPs, largest {largest['op']} {largest['shape']} "
                f"x{largest['count']} at {largest['tflops']:.4f}"
            )
    if report["results"]:
        header = (f"{'model':<14} {'input':<8} {'batch':>5} {'mode':<5} {'variant':<16} {'prec':<4} "
                  f"{'ms/step':>9} {'per s':>8} {'TFLOP/s':>8} {'%peak':>6} {'%sq':>6} {'mem MB':>7} "
                  f"{'x base':>6}")  # fmt: skip
        lines += ["", header, "-" * len(header)]
    speedups = {(s["model"], s["input"], s["batch_size"], s["mode"], s["variant"]): s["speedup"]
                for s in report["speedups"]}  # fmt: skip
    for r in report["results"]:
        ratio = speedups.get((r["model"], r["input"], r["batch_size"], r["mode"], r["variant"]))
        if r["variant"] == "baseline":
            ratio = 1.0
        lines.append(
            f"{r['model']:<14} {r['input']:<8} {r['batch_size']:>5} {r['mode']:<5} {r['variant']:<16} "
            f"{r['precision']:<4} {1e3 * r['median_s']:>9.1f} {r['samples_per_s']:>8.1f} {r['tflops']:>8.4f} "
            f"{_percent(r['peak_fraction']):>6} {_percent(r.get('square_peak_fraction')):>6} "
            f"{_fmt(r['mem_delta_mb'], '.0f'):>7} {_fmt(ratio, '.2f'):>6}" + ("  !" if _row_problems(r) else "")
        )
    if report.get("latency"):
        lines += ["", "latency of one prediction at batch 1 (cct predict's path: decoded image or token ids in, "
                      "probabilities out)"]  # fmt: skip
        lines.append(f"  {'model':<14} {'input':<8} {'path':<8} {'device':<7} {'views':>5} {'p50 ms':>8} "
                     f"{'p90 ms':>8} {'first s':>8} {'x eager':>7}")  # fmt: skip
        for r in report["latency"]:
            if r["skipped"]:
                lines.append(f"  {r['model']:<14} {r['input']:<8} {r['path']:<8} {r['note']}")
                continue
            lines.append(f"  {r['model']:<14} {r['input']:<8} {r['path']:<8} {r['device']:<7} {r.get('views', 1):>5} "
                         f"{r['p50_ms']:>8.2f} {r['p90_ms']:>8.2f} {r['first_call_s']:>8.2f} "
                         f"{_fmt(r['speedup_vs_eager'], '.2f'):>7}")
    if "scaling" in report:
        scaling = report["scaling"]
        lines += ["", f"scaling ({scaling['model']}, {scaling['variant']}): step time vs tokens"]
        lines += [f"  {r['input']:<9} {r['tokens']:>5} tokens  batch {r['batch_size']:>4} {r['mode']:<5} "
                  f"{1e3 * r['median_s']:>9.1f} ms  {r['img_per_s']:>8.1f} img/s" for r in scaling["tokens"]]
        lines += ["step time vs batch size"]
        lines += [f"  {r['input']:<9} batch {r['batch_size']:>4} {r['mode']:<5} {1e3 * r['median_s']:>9.1f} ms  "
                  f"{r['img_per_s']:>8.1f} img/s" for r in scaling["batch"]]
        lines += ["eval forward peak memory (MB above the memory before the step)"]
        lines += [f"  {r['input']:<9} {r['tokens']:>5} tokens  {r['attn_impl']:<8} {_fmt(r['mem_delta_mb'], '.1f'):>8}"
                  for r in scaling["attention_memory"]]  # fmt: skip
    if "time_to_accuracy" in report:
        t = report["time_to_accuracy"]
        if t["reached"]:
            outcome = (f"reached at epoch {t['epoch']} after {_fmt(t['seconds'], '.1f')} s "
                       f"({t['train_seconds']:.1f} s of training steps)")  # fmt: skip
        else:
            outcome = f"not reached in {t['epochs']} epochs (best {t['best_val_top1']:.2f}%)"
        lines += ["", f"time to {t['target_top1']}% val top-1 ({t['model']} on {t['dataset']}): {outcome}; "
                      f"whole run {t['total_seconds']:.1f} s"]  # fmt: skip
    if warnings:
        marked = " (rows marked !)" if any(_row_problems(r) for r in report["results"]) else ""
        lines += ["", f"UNRELIABLE: {len(warnings)} warning(s) above{marked}: these numbers are not this machine's "
                      "speed; rerun on a quiet machine"]  # fmt: skip
    return "\n".join(lines)


# -------------------------------------------------------------------------------------------------- CLI


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")
    return values


def _name_list(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip())


# How an option's text becomes a field's value, by the field's type (annotations are strings here).
_PARSERS: dict[str, Callable[[str], object]] = {
    "tuple[str, ...]": _name_list, "tuple[int, ...]": _int_list, "int": int, "float": float, "str": str,
}  # fmt: skip
_METAVARS = {"tuple[str, ...]": "A,B", "tuple[int, ...]": "N,N", "int": "N", "float": "X", "str": "NAME"}


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``cct bench``: one per BenchConfig field (default None = the field's default)."""
    defaults = BenchConfig()
    for f in fields(BenchConfig):
        kind = f.type.replace(" | None", "")
        default = getattr(defaults, f.name)
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        help_text = f.metadata["help"] + ("" if default in (None, False) else f" (default: {shown})".replace("%", "%%"))
        flag = "--" + f.name.replace("_", "-")
        if kind == "bool":
            parser.add_argument(flag, action="store_true", default=None, help=help_text)
        else:
            parser.add_argument(flag, type=_PARSERS[kind], default=None, help=help_text, metavar=_METAVARS[kind],
                                choices=PRECISIONS if f.name == "precision" else None)
    parser.add_argument("--output", help="write the report as JSON to this file")
    parser.add_argument("--strict", action="store_true",
                        help="exit 1 when the run found signs of contention (the report's warnings)")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    """A BenchConfig from the parsed ``cct bench`` options (the fields' defaults where none was given)."""
    given = {f.name: getattr(args, f.name) for f in fields(BenchConfig) if getattr(args, f.name, None) is not None}
    if tuple(given.get("variants", ())) == ("all",):
        given["variants"] = tuple(VARIANTS)
    if tuple(given.get("modes", ())) == ("none",):
        given["modes"] = ()
    return BenchConfig(**given)


def run_bench(args: argparse.Namespace) -> int:
    """``cct bench``: tune the process like ``cct train``, run, print the tables, write JSON; with
    ``--strict`` exit 1 when the report has warnings."""
    from .training.runtime import tune_cpu

    config = config_from_args(args)
    for model in config.models:
        parse_model_spec(model)  # fail on a bad name before minutes of measuring
    tune_cpu(config.threads)
    report = run_benchmark(config, quiet=args.quiet)
    print(format_report(report))
    if args.output:
        path = Path(args.output)
        atomic_write_text(path, json.dumps(report, indent=2) + "\n")
        print(f"wrote {path}")
    if getattr(args, "strict", False) and report["warnings"]:
        print(f"cct bench: {len(report['warnings'])} warning(s) and --strict: exit 1", file=sys.stderr)
        return 1
    return 0
