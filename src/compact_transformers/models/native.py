"""Native CPU kernels, compiled on first use with the system's C compiler and cached.

One C file, ``softmax_dropout.c``: attention's softmax fused with its dropout (see
:func:`.layers.softmax_dropout`), LayerNorm fused with the residual add before it and the bf16 cast after it
(:func:`.layers.native_add_norm`) and, on CPUs with AVX-512 BF16, attention's whole core with its matmuls on
AVX-512 BF16 dot products or AMX tiles (:func:`.layers.native_attention`). Its mask is a counter-based hash of a
seed drawn from torch's generator, so ``torch.manual_seed`` still fixes every mask, a resumed run draws the same
ones, and the backward recomputes the mask instead of storing it. Without a compiler, or with ``CCT_NATIVE=0``,
:func:`softmax_dropout_library` returns None and callers use torch's operators.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from functools import cache
from pathlib import Path

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("softmax_dropout.c")
# -march=native turns on the AVX-512 BF16 rows where the CPU has them (AMX Xeons, AMD Zen 4+); reassociating
# float sums lets the compiler vectorise the portable rows' reductions; no flag assumes finite values (masked
# scores are -inf).
FLAGS = ("-O3", "-march=native", "-fno-math-errno", "-fassociative-math", "-fno-signed-zeros", "-fno-trapping-math",
         "-shared", "-fPIC", "-pthread")


def _cpu_signature() -> str:
    """What ``-march=native`` compiles for: the CPU's model and flags (a cache shared by two machines must not
    hand one the other's instructions)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or platform.machine()
    keys = ("model name", "flags", "Features", "CPU implementer", "CPU part")  # x86, then ARM's names
    return "\n".join(dict.fromkeys(line for line in lines if line.startswith(keys)))  # once each, in order


def _declare(library: ctypes.CDLL) -> ctypes.CDLL:
    entry = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint64,
             ctypes.c_uint32, ctypes.c_float, ctypes.c_float, ctypes.c_int, ctypes.c_int]
    for name in ("cct_softmax_dropout_forward", "cct_softmax_dropout_backward"):
        function = getattr(library, name)
        function.argtypes = entry
        function.restype = ctypes.c_int
    library.cct_softmax_dropout_keep.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_uint64, ctypes.c_uint32]
    library.cct_softmax_dropout_keep.restype = None
    library.cct_softmax_dropout_vector_rows.argtypes = []
    library.cct_softmax_dropout_vector_rows.restype = ctypes.c_int
    library.cct_attention_available.argtypes = []
    library.cct_attention_available.restype = ctypes.c_int
    sizes = [ctypes.c_int64] * 4  # batch, tokens, heads, head_dim
    scales_threads = [ctypes.c_float, ctypes.c_float, ctypes.c_int, ctypes.c_int]  # scale, 1 / (1 - p), engine, threads
    library.cct_attention_forward.argtypes = (
        [ctypes.c_void_p] * 5 + sizes + [ctypes.c_uint64, ctypes.c_uint32] + scales_threads)  # + the mask's draw
    library.cct_attention_backward.argtypes = [ctypes.c_void_p] * 6 + sizes + scales_threads
    library.cct_attention_forward.restype = library.cct_attention_backward.restype = ctypes.c_int
    pointer, size = ctypes.c_void_p, ctypes.c_int64
    library.cct_add_norm_forward.argtypes = ([pointer] * 3 + [size] + [pointer] * 2 + [ctypes.c_float, size, size]
                                             + [pointer] * 5 + [ctypes.c_int])
    library.cct_add_norm_backward.argtypes = [pointer] * 7 + [size] * 3 + [pointer] * 4 + [ctypes.c_int]
    library.cct_add_norm_forward.restype = library.cct_add_norm_backward.restype = ctypes.c_int
    return library


def build_library(directory: Path, flags: tuple[str, ...] = FLAGS, compiler: str | None = None) -> ctypes.CDLL:
    """Compile ``softmax_dropout.c`` with ``flags`` into ``directory`` (once per source, flags, compiler and CPU)
    and load it. Raises OSError or subprocess.SubprocessError when it cannot."""
    compiler = compiler or os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise FileNotFoundError("no C compiler (cc, gcc or $CC)")
    digest = hashlib.sha256()
    for part in (SOURCE.read_bytes(), " ".join(flags).encode(), compiler.encode(), _cpu_signature().encode()):
        digest.update(part)
    target = directory / f"softmax_dropout-{digest.hexdigest()[:16]}.so"
    if not target.exists():
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=directory) as scratch:
            built = Path(scratch) / target.name
            subprocess.run([compiler, *flags, str(SOURCE), "-o", str(built), "-lm"], check=True,
                           capture_output=True, text=True, timeout=120)
            os.replace(built, target)  # atomic: a concurrent process never loads a half-written library
    return _declare(ctypes.CDLL(str(target)))


@cache
def softmax_dropout_library() -> ctypes.CDLL | None:
    """The kernel built for this CPU (cached under ``$CCT_CACHE/native``), or None, with one log line saying why,
    where it cannot be had."""
    if os.environ.get("CCT_NATIVE", "1") == "0" or platform.system() != "Linux":
        return None
    from .weights import cache_dir  # weights imports layers, which imports this module

    try:
        return build_library(cache_dir() / "native")
    except (OSError, subprocess.SubprocessError) as error:
        detail = (getattr(error, "stderr", None) or str(error)).strip()
        log.warning("native softmax-dropout kernel unavailable (%s): attention dropout on the CPU uses torch's "
                    "operators, which are slower", detail.splitlines()[-1] if detail else type(error).__name__)
        return None


# The fused attention's engines for its matmuls (the bit mask of cct_attention_available)
ENGINE_VECTOR, ENGINE_AMX = 1, 2
ATTENTION_ENGINES = {"vector": ENGINE_VECTOR, "amx": ENGINE_AMX}


@cache
def attention_engine() -> int:
    """The engine of the fused attention kernel here: ``ENGINE_AMX`` (AMX tiles) where the build and the OS have
    them, else ``ENGINE_VECTOR`` (AVX-512 BF16 dot products, AMD Zen 4 and later too), 0 without either.
    ``CCT_NATIVE_ATTENTION`` picks one (``vector``, ``amx``; 0 where it is missing) or turns the kernel off
    (``0``: attention then runs its matmuls in torch and only the softmax-dropout here, for comparisons)."""
    wanted = os.environ.get("CCT_NATIVE_ATTENTION", "1").strip().lower()
    if wanted == "0":
        return 0
    library = softmax_dropout_library()
    engines = int(library.cct_attention_available()) if library is not None else 0
    if wanted in ATTENTION_ENGINES:
        return ATTENTION_ENGINES[wanted] if engines & ATTENTION_ENGINES[wanted] else 0
    if wanted not in ("1", "", "auto"):
        log.warning("CCT_NATIVE_ATTENTION=%s: expected 0, 1, auto, vector or amx; using auto", wanted)
    return ENGINE_AMX if engines & ENGINE_AMX else ENGINE_VECTOR if engines & ENGINE_VECTOR else 0


def attention_available() -> bool:
    """Whether the fused attention kernel runs here (see :func:`attention_engine`)."""
    return attention_engine() != 0


# On the vector engine the fused kernel pays off for long sequences only (AMD EPYC, cct bench, batch 128):
# CCT-7/3x1 (256 tokens) trains 1.16x faster with it, CCT-7/3x2 (64 tokens) the same, CCT-2/3x2 on 28x28 images
# (49 tokens, padded to 64 inside) 8% slower. AMX tiles won or tied at every length measured.
VECTOR_MIN_TOKENS = 65


def attention_pays(tokens: int) -> bool:
    """Whether ``Attention`` should hand a sequence of ``tokens`` to the fused kernel here, by what was measured."""
    engine = attention_engine()
    return engine == ENGINE_AMX or (engine == ENGINE_VECTOR and tokens >= VECTOR_MIN_TOKENS)


@cache
def add_norm_enabled() -> bool:
    """Whether the fused residual add + LayerNorm kernel may run: only with ``CCT_NATIVE_NORM=1`` (and the library
    built). Off by default: measured on an AMD EPYC it made no difference to CCT-7/3x1's step that the bench could
    resolve and slowed CCT-2/3x2 on 28x28 images by 5% (per call overhead on small tensors), although each fused
    norm alone beats torch's three operators 1.6x on CCT-7/3x1's shapes; not yet measured on AMX."""
    return os.environ.get("CCT_NATIVE_NORM", "0").strip() == "1" and softmax_dropout_library() is not None
