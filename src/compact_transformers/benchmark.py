"""``cct bench``: training and inference throughput of the Compact Transformers on this machine.

For each model and batch size, every variant (a set of speed levers: precision, memory layout, attention
kernel, optimizer kernel, torch.compile) gets a training-step function (forward + backward + AdamW step) and
an inference function (eval forward under no_grad). The variants of one model are measured INTERLEAVED
(baseline, fast, baseline, fast ...) so that load from other processes on a shared machine hits all of them
alike; the reported time is the median over the repeats after warm-up, and speed-ups are ratios of medians
against the ``baseline`` variant, the paper's reference form (fp32, NCHW, explicit attention, plain AdamW).

Achieved TFLOP/s count 2 x MACs per image forward and 3 x that per training step, against the matmul peak
measured in the same run (torch.mm of square matrices in each dtype, the best of a size sweep). Peak memory
is the process's peak RSS during one step on CPU (reset through /proc/self/clear_refs, read from VmHWM) and
torch's peak allocation on CUDA; ``mem_delta_mb`` is that peak minus the memory in use just before the step.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import datetime
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Callable

import torch

from .errors import ConfigError

SCHEMA = "cct-bench/1"
DEFAULT_MODELS = ("cct_2_3x2_32:28x28x1", "cct_7_3x2_32:32x32x3", "cct_7_3x1_32:32x32x3")
MODES = ("train", "infer")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
CPU_FLAGS_OF_INTEREST = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile", "amx_int8")
_DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


# ----------------------------------------------------------------------------------------------- variants


@dataclass(frozen=True)
class Variant:
    """One combination of speed levers. ``amp``: autocast to the run's precision (``--precision``)."""

    name: str
    attn_impl: str  # "explicit" | "sdpa" | "auto" (explicit while training, SDPA in eval)
    channels_last: bool
    amp: bool
    recipe_optimizer: bool  # True: the fused AdamW of `cct train`; False: torch.optim.AdamW defaults
    description: str
    compile: bool = False
    low_precision_weights: bool = False  # weights (and activations) in the run's precision, fp32 master copies


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
        Variant("fp32-auto", "auto", False, False, False, "baseline + SDPA in eval only"),
        Variant("fp32-fused", "explicit", False, False, True, "baseline + the recipe's fused AdamW"),
        # two levers, and the fast path with SDPA in training as well
        Variant("amp-cl", "explicit", True, True, False, "mixed precision + channels-last"),
        Variant("fast-sdpa", "sdpa", True, True, True, "fast with SDPA in training too"),
        Variant("lp-weights", "auto", True, True, True,
                "fast with the model itself in bf16/fp16 (no autocast casts) and fp32 master weights",
                low_precision_weights=True),
    )
}


def resolve_variant(name: str) -> Variant:
    """A registered variant; the suffix ``+compile`` wraps it in torch.compile."""
    base, compiled = (name[: -len("+compile")], True) if name.endswith("+compile") else (name, False)
    if base not in VARIANTS:
        raise ConfigError(f"unknown variant {name!r}; expected one of {', '.join(VARIANTS)} (optionally +compile)")
    variant = VARIANTS[base]
    return replace(variant, name=name, compile=True) if compiled else variant


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
                                        "+compile to compile one: " + ", ".join(VARIANTS))
    modes: tuple[str, ...] = _option(MODES, "train, infer or both")
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
        if bad_modes or not self.modes:
            raise ConfigError(f"modes must be a non-empty subset of {MODES}, got {list(self.modes)}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        for name in ("warmup", "repeats", "steps", "threads", "accuracy_epochs"):  # (warmup: it measures memory)
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{name} must be >= 1, got {value}")
        if self.time_to_accuracy is not None and not 0 < self.time_to_accuracy <= 100:
            raise ConfigError(f"time_to_accuracy is a val top-1 in percent (0, 100], got {self.time_to_accuracy}")

    def variant_list(self) -> list[Variant]:
        """The variants to run: the requested ones, then their compiled copies with ``compile``."""
        names = list(dict.fromkeys(self.variants))
        if self.compile:
            names += [f"{n}+compile" for n in names if n != "baseline" and not n.endswith("+compile")]
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


def build_step(spec: ModelSpec, variant: Variant, mode: str, batch_size: int, device: torch.device,
               amp_dtype: torch.dtype | None, seed: int = 0) -> Callable[[], None]:
    """A function that runs one training step (``mode="train"``) or one eval forward (``"infer"``) of
    ``spec`` under ``variant`` on a fixed random batch.

    Training is THE step of `cct train` (`training.step.train_step`) with the paper's recipe: on-device
    augmentation of uint8 images (RandAugment, crops, flips), Mixup/CutMix, label smoothing, AdamW and the
    learning-rate schedule; the variant sets precision, memory layout, attention and optimizer kernel."""
    from .augment import TrainAugment, WordDropout
    from .data.text import UNK
    from .training.build import make_augment_config
    from .training.optim import MasterWeightOptimizer
    from .training.recipe import TrainConfig, apply_recipe
    from .training.runtime import prepare_input, prepare_model
    from .training.step import Batch, build_step_tools, train_step

    if mode not in MODES:
        raise ConfigError(f"mode must be one of {MODES}, got {mode!r}")
    torch.manual_seed(seed)
    model = prepare_model(spec.create(variant.attn_impl), device, channels_last=variant.channels_last)
    dtype = amp_dtype if variant.amp else None
    low_precision = variant.low_precision_weights and dtype is not None
    if mode == "infer":
        inputs = spec.example(batch_size, device)
        if low_precision:  # the model itself in low precision, no autocast casts
            inputs = tuple(x.to(dtype) if x.is_floating_point() else x for x in inputs)
            model, dtype = model.to(dtype), None
        network = torch.compile(model) if variant.compile else model
        network.eval()

        def infer_step() -> None:
            with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                network(prepare_input(inputs[0], channels_last=variant.channels_last), *inputs[1:])

        return infer_step
    # the recipe `cct train` uses for such data: the paper's for images, the text recipe (word dropout) for text
    recipe = apply_recipe(TrainConfig(), "text", epochs=50) if spec.is_text else TrainConfig()
    recipe = recipe.replace(batch_size=batch_size)
    optimizer = MasterWeightOptimizer(model, recipe) if low_precision else None
    if low_precision:
        model = model.to(dtype)
    if spec.is_text:
        augment = WordDropout(recipe.word_dropout, UNK)
    else:
        mean, std = (0.5,) * spec.in_chans, (0.25,) * spec.in_chans
        augment = TrainAugment(make_augment_config(recipe, spec.img_size, mean, std))
    tools = build_step_tools(
        model, recipe, num_classes=model.config.num_classes, steps_per_epoch=1000, amp_dtype=dtype,
        augment=augment, channels_last=variant.channels_last, optimizer=optimizer,
        optimizer_kernel="fastest" if variant.recipe_optimizer else "plain",
    )  # fmt: skip
    inputs = spec.example(batch_size, device, uint8=True)
    labels = torch.randint(0, model.config.num_classes, (batch_size,), device=device)
    batch = Batch(inputs[0], labels, inputs[1] if spec.is_text else None)
    network = torch.compile(model) if variant.compile else model
    network.train()
    steps = iter(range(1 << 62))

    def step() -> None:
        train_step(network, batch, tools, next(steps))

    return step


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
        "fused_optimizer": variant.recipe_optimizer, "compiled": variant.compile, "macs_per_image": macs,
        "median_s": result.median_s, "min_s": min(result.times_s), "times_s": result.times_s,
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
            for mode in config.modes:
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
        for mode in config.modes:
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
        for mode in config.modes:
            result = time_one(spec, mode, batch)
            batch_rows.append({"input": spec.label, "batch_size": batch, "mode": mode, "median_s": result.median_s,
                               "img_per_s": batch / result.median_s})
    return {"model": base.name, "variant": "fast", "tokens": tokens_rows, "batch": batch_rows,
            "attention_memory": memory_rows}


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
    # the peak is measured before and after the models, and the better one counts: on a shared machine a
    # single measurement can land in a burst of load
    sizes = tuple(config.peak_sizes or ((512, 1024, 2048) if device.type == "cpu" else (2048, 4096, 8192)))
    _say(f"bench: matmul peak on {device} ({', '.join(map(str, sizes))})", quiet)
    peak_start = measure_matmul_peak(device, sizes)
    report["results"] = bench_models(config, device, quiet)
    peak_end = measure_matmul_peak(device, sizes)
    report["matmul_peak"] = {
        dtype: {"tflops": max(peak_start[dtype]["tflops"], peak_end[dtype]["tflops"]),
                "start": peak_start[dtype], "end": peak_end[dtype]}
        for dtype in peak_start
    }  # fmt: skip
    for record in report["results"]:
        peak = report["matmul_peak"].get(record["precision"], {}).get("tflops")
        record["peak_tflops"] = peak
        record["peak_fraction"] = record["tflops"] / peak if peak else None
    report["speedups"] = _speedups(report["results"])
    if config.scaling:
        report["scaling"] = bench_scaling(config, device, quiet)
    if config.time_to_accuracy is not None:
        report["time_to_accuracy"] = bench_time_to_accuracy(config, device, quiet)
    if hasattr(os, "getloadavg"):
        report["machine"]["load_average_end"] = list(os.getloadavg())
    return report


def _settings(config: BenchConfig, device: torch.device) -> dict:
    settings = asdict(config)
    amp_dtype = _amp_dtype(config.precision, device)
    settings["amp_dtype"] = _DTYPE_NAMES[amp_dtype] if amp_dtype is not None else "fp32"
    settings["steps_per_repeat"] = config.steps or (1 if device.type == "cpu" else 10)
    settings["variant_descriptions"] = {v.name: v.description for v in config.variant_list()}
    settings["command"] = " ".join(sys.argv)
    return json.loads(json.dumps(settings))  # tuples -> lists


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_report(report: dict) -> str:
    """The report as plain-text tables."""
    machine = report["machine"]
    flags = ", ".join(f for f, on in machine["cpu_flags"].items() if on) or "none"
    peaks = ", ".join(f"{k} {v['tflops']:.3f}" for k, v in report["matmul_peak"].items())
    lines = [
        f"{machine['cpu']} ({flags}); {machine['threads']} threads; torch {machine['torch']}; "
        f"device {machine['device']}{' ' + machine['gpu'] if machine['gpu'] else ''}; {machine['date']}",
        f"matmul peak TFLOP/s: {peaks}",
        "",
    ]
    header = (f"{'model':<14} {'input':<8} {'batch':>5} {'mode':<5} {'variant':<16} {'prec':<4} "
              f"{'ms/step':>9} {'per s':>8} {'TFLOP/s':>8} {'%peak':>6} {'mem MB':>7} {'x base':>6}")  # fmt: skip
    lines += [header, "-" * len(header)]
    speedups = {(s["model"], s["input"], s["batch_size"], s["mode"], s["variant"]): s["speedup"]
                for s in report["speedups"]}  # fmt: skip
    for r in report["results"]:
        ratio = speedups.get((r["model"], r["input"], r["batch_size"], r["mode"], r["variant"]))
        if r["variant"] == "baseline":
            ratio = 1.0
        fraction = None if r["peak_fraction"] is None else 100 * r["peak_fraction"]
        lines.append(
            f"{r['model']:<14} {r['input']:<8} {r['batch_size']:>5} {r['mode']:<5} {r['variant']:<16} "
            f"{r['precision']:<4} {1e3 * r['median_s']:>9.1f} {r['samples_per_s']:>8.1f} {r['tflops']:>8.4f} "
            f"{_fmt(fraction, '.1f'):>6} {_fmt(r['mem_delta_mb'], '.0f'):>7} {_fmt(ratio, '.2f'):>6}"
        )
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
    parser.add_argument("--quiet", action="store_true", help="no progress lines")


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    """A BenchConfig from the parsed ``cct bench`` options (the fields' defaults where none was given)."""
    given = {f.name: getattr(args, f.name) for f in fields(BenchConfig) if getattr(args, f.name, None) is not None}
    if tuple(given.get("variants", ())) == ("all",):
        given["variants"] = tuple(VARIANTS)
    return BenchConfig(**given)


def run_bench(args: argparse.Namespace) -> int:
    """``cct bench``: tune the process like ``cct train``, run, print the tables, write JSON."""
    from .training.runtime import tune_cpu

    config = config_from_args(args)
    for model in config.models:
        parse_model_spec(model)  # fail on a bad name before minutes of measuring
    tune_cpu(config.threads)
    report = run_benchmark(config, quiet=args.quiet)
    print(format_report(report))
    if args.output:
        path = Path(args.output)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {path}")
    return 0
