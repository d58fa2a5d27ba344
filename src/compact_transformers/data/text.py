"""Text classification data: a word tokenizer, a vocabulary, padded id tensors, and offline readers.

    from compact_transformers.data.text import load_text_dataset
    ds = load_text_dataset("agnews", "~/data/ag_news_csv", seq_len=64)
    ds.train.ids, ds.train.mask, ds.train.labels, ds.val, ds.test, ds.classes, ds.vocab

Readers (all from files the user has): agnews / dbpedia (train.csv, test.csv), trec (train_5500.label,
TREC_10.label), sst2 (GLUE train.tsv, dev.tsv), sst5 (PTB trees train.txt, dev.txt, test.txt), imdb
(aclImdb/{train,test}/{pos,neg}/*.txt), text_folder (class folders of .txt files, the image folder rules) and
csv / tsv / jsonl (a file, or a folder of train.*, test.*, val.*, with named text and label columns).
Malformed input raises DatasetError as `file:line: reason`.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import logging
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import torch

from ..errors import ConfigError, DatasetError
from .core import as_index, stratified_split
from .images import IMAGE_EXTENSIONS
from .readers import check_split_classes, class_dirs, class_folder_layout

logger = logging.getLogger(__name__)

TOKENIZER = "words-v1"  # name of the tokenization rule below, saved with models
UNK, PAD = 0, 1  # ids of "<unk>" and "<pad>" (torchtext's convention; text models default to padding_idx=1)
SPECIALS = ("<unk>", "<pad>")

TEXT_DATASET_NAMES = ("agnews", "dbpedia", "trec", "sst2", "sst5", "imdb", "text_folder", "csv", "tsv", "jsonl")

AGNEWS_CLASSES = ["World", "Sports", "Business", "Sci/Tech"]
DBPEDIA_CLASSES = [
    "Company", "EducationalInstitution", "Artist", "Athlete", "OfficeHolder", "MeanOfTransportation", "Building",
    "NaturalPlace", "Village", "Animal", "Plant", "Album", "Film", "WrittenWork",
]  # fmt: skip
TREC_COARSE_CLASSES = ["ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"]
TREC_FINE_CLASSES = sorted(
    f"{coarse}:{fine}"
    for coarse, fines in (
        ("ABBR", "abb exp"),
        ("DESC", "def desc manner reason"),
        ("ENTY", "animal body color cremat currency dismed event food instru lang letter other plant product "
                 "religion sport substance symbol techmeth termeq veh word"),
        ("HUM", "desc gr ind title"),
        ("LOC", "city country mount other state"),
        ("NUM", "code count date dist money ord other perc period speed temp volsize weight"),
    )
    for fine in fines.split()
)  # fmt: skip
SST2_CLASSES = ["negative", "positive"]
SST5_CLASSES = ["very negative", "negative", "neutral", "positive", "very positive"]
IMDB_CLASSES = ["neg", "pos"]
TEXT_EXTENSIONS = (".txt",)

Example = tuple[str, int]  # (text, class index)
T = TypeVar("T")
R = TypeVar("R")

# -----------------------------------------------------------------------------
# tokenizer and vocabulary

_LINE_BREAK_RE = re.compile(r"<br\s*/?>", re.IGNORECASE)
_TOKEN_RE = re.compile(r"[^\W_]+(?:'[^\W_]+)*|\S")
_CLITIC_RE = re.compile(r"^(.+?)(n't|'s|'re|'ve|'ll|'d|'m)$")


def tokenize(text: str) -> list[str]:
    """Split `text` into tokens by the rule named `TOKENIZER` ("words-v1"):

    1. HTML line breaks (`<br>`, `<br/>`, `<br />`, any case) become spaces; the text is lower-cased
       (`str.lower`) and the typographic apostrophe U+2019 becomes `'`.
    2. A word is a run of letters and digits (unicode `\\w` without `_`), with single apostrophes inside it
       kept (`o'clock`); the English clitics `n't 's 're 've 'll 'd 'm` are split off the word before them
       (`don't` -> `do n't`, `it's` -> `it 's`), as the Penn Treebank tokenizer behind GloVe does, so that
       these words find their vectors.
    3. Every other character that is not whitespace is a token of its own (`.`, `,`, `'`, `-`, `_`, `$`, ...).

    `"It's <br />GREAT, isn't it?!"` -> `["it", "'s", "great", ",", "is", "n't", "it", "?", "!"]`.
    """
    text = _LINE_BREAK_RE.sub(" ", text).lower().replace("\u2019", "'")
    tokens = []
    for token in _TOKEN_RE.findall(text):
        clitic = _CLITIC_RE.match(token) if "'" in token else None
        tokens += [clitic.group(1), clitic.group(2)] if clitic else [token]
    return tokens


def _count_tokens(token_lists: Iterable[list[str]]) -> Counter[str]:
    counts: Counter[str] = Counter()
    for tokens in token_lists:
        counts.update(tokens)
    return counts


@dataclass(repr=False)
class Vocabulary:
    """Token strings by id: `tokens[0] == "<unk>"`, `tokens[1] == "<pad>"`; words follow."""

    tokens: list[str]
    _index: dict[str, int] = field(init=False, compare=False)

    def __post_init__(self) -> None:
        if list(self.tokens[:2]) != list(SPECIALS):
            raise ConfigError(f"vocabulary: expected the tokens to start with {list(SPECIALS)}, got {self.tokens[:2]}")
        self._index = {token: i for i, token in enumerate(self.tokens)}
        if len(self._index) != len(self.tokens):
            repeated = sorted(t for t, n in Counter(self.tokens).items() if n > 1)
            raise ConfigError(f"vocabulary: repeated tokens {repeated[:10]}")

    def __len__(self) -> int:
        return len(self.tokens)

    def __repr__(self) -> str:
        return f"Vocabulary({len(self)} tokens, tokenizer={TOKENIZER!r})"

    def id(self, token: str) -> int:
        """The id of `token`, or UNK."""
        return self._index.get(token, UNK)

    def encode(self, text: str) -> list[int]:
        """The ids of the tokens of `text` (unknown words are UNK)."""
        return [self._index.get(token, UNK) for token in tokenize(text)]

    @classmethod
    def build(cls, texts: Iterable[str], *, min_freq: int = 1, max_size: int | None = None) -> Vocabulary:
        """The words of `texts` (the training texts only) seen at least `min_freq` times, most frequent first,
        ties in alphabetical order. `max_size` caps the size including the two specials."""
        return _vocab_from_counts(_count_tokens(tokenize(t) for t in texts), min_freq, max_size)

    def to_dict(self) -> dict:
        """JSON-ready form, saved with a model: {"tokenizer": TOKENIZER, "tokens": [...]}."""
        return {"tokenizer": TOKENIZER, "tokens": list(self.tokens)}

    @classmethod
    def from_dict(cls, data: dict) -> Vocabulary:
        """The vocabulary saved by `to_dict`; ConfigError if it was made for another tokenizer or is malformed."""
        if not isinstance(data, dict) or "tokens" not in data:
            raise ConfigError(f"vocabulary: expected a dict with 'tokenizer' and 'tokens', got {type(data).__name__}")
        if data.get("tokenizer") != TOKENIZER:
            raise ConfigError(
                f"vocabulary: made for the tokenizer {data.get('tokenizer')!r}, but this version tokenizes with "
                f"{TOKENIZER!r}; the saved ids would not match"
            )
        tokens = data["tokens"]
        if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
            raise ConfigError("vocabulary: 'tokens' must be a list of strings")
        return cls(tokens=list(tokens))


def _vocab_from_counts(counts: Counter[str], min_freq: int, max_size: int | None) -> Vocabulary:
    if not isinstance(min_freq, int) or min_freq < 1:
        raise ConfigError(f"vocabulary: min_freq must be a positive int, got {min_freq!r}")
    if max_size is not None and (not isinstance(max_size, int) or max_size < len(SPECIALS)):
        raise ConfigError(
            f"vocabulary: max_size must be an int >= {len(SPECIALS)} (it counts <unk> and <pad>), got {max_size!r}"
        )
    words = sorted((t for t, n in counts.items() if n >= min_freq and t not in SPECIALS), key=lambda t: (-counts[t], t))
    if max_size is not None:
        words = words[: max_size - len(SPECIALS)]
    return Vocabulary(tokens=[*SPECIALS, *words])


def _encode_token_lists(
    token_lists: Sequence[list[str]], vocab: Vocabulary, seq_len: int
) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(seq_len, int) or seq_len < 1:
        raise ConfigError(f"seq_len must be a positive int, got {seq_len!r}")
    lookup, unk = vocab._index.get, itertools.repeat(UNK)
    flat: list[int] = []
    lengths = []
    for tokens in token_lists:
        kept = tokens[:seq_len]
        flat.extend(map(lookup, kept, unk))
        lengths.append(len(kept))
    length_tensor = torch.tensor(lengths, dtype=torch.int64)
    ids = torch.full((len(lengths), seq_len), PAD, dtype=torch.int64)
    ids[_length_mask(length_tensor, seq_len)] = torch.tensor(flat, dtype=torch.int64)  # row-major order
    return ids, length_tensor


def encode_texts(texts: Sequence[str], vocab: Vocabulary, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids int64 (N, seq_len), lengths int64 (N,)): the tokens of each text as ids, truncated to `seq_len`
    and right-padded with PAD. An empty text has length 0 (a row of PAD)."""
    return _encode_token_lists([tokenize(t) for t in texts], vocab, seq_len)


def _length_mask(lengths: torch.Tensor, seq_len: int) -> torch.Tensor:
    return torch.arange(seq_len, device=lengths.device)[None, :] < lengths[:, None]


# -----------------------------------------------------------------------------
# splits and dataset


def _check_vector(t: object, name: str, n: int) -> None:
    if not isinstance(t, torch.Tensor) or t.dtype != torch.int64 or t.dim() != 1 or len(t) != n:
        got = f"{t.dtype}{list(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__
        raise ValueError(f"TextSplit.{name}: expected an int64 tensor of shape ({n},), got {got}")


@dataclass
class TextSplit:
    """One split: `ids` int64 (N, L) right-padded with PAD, `lengths` int64 (N,), `labels` int64 (N,),
    and the raw `texts` (for baselines and error reports; may be None)."""

    ids: torch.Tensor
    lengths: torch.Tensor
    labels: torch.Tensor
    texts: list[str] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.ids, torch.Tensor) or self.ids.dtype != torch.int64 or self.ids.dim() != 2:
            got = f"{self.ids.dtype}{list(self.ids.shape)}" if isinstance(self.ids, torch.Tensor) else type(self.ids)
            raise ValueError(f"TextSplit.ids: expected an int64 tensor of shape (N, L), got {got}")
        n, seq_len = self.ids.shape
        _check_vector(self.lengths, "lengths", n)
        _check_vector(self.labels, "labels", n)
        if n and (int(self.lengths.min()) < 0 or int(self.lengths.max()) > seq_len):
            raise ValueError(f"TextSplit.lengths: expected values in [0, {seq_len}]")
        if self.texts is not None and len(self.texts) != n:
            raise ValueError(f"TextSplit: {n} rows of ids but {len(self.texts)} texts")

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __repr__(self) -> str:
        return f"TextSplit(n={len(self)}, seq_len={self.ids.shape[1]}, texts={self.texts is not None})"

    @property
    def mask(self) -> torch.Tensor:
        """bool (N, L): True at real tokens (position < length), False at padding."""
        return _length_mask(self.lengths, self.ids.shape[1])

    def select(self, index: torch.Tensor | Sequence[int]) -> TextSplit:
        """A new split holding the examples at `index` (in that order)."""
        idx = as_index(index, len(self))
        texts = None if self.texts is None else [self.texts[i] for i in idx.tolist()]
        return TextSplit(ids=self.ids.index_select(0, idx), lengths=self.lengths.index_select(0, idx),
                         labels=self.labels.index_select(0, idx), texts=texts)  # fmt: skip


@dataclass
class TextDataset:
    """A text dataset in memory. `val` is the split for model selection; `test` is an extra held-out split or
    None. `vocab` maps tokens to the ids in the splits; every split is padded to `seq_len`."""

    name: str
    train: TextSplit
    val: TextSplit
    test: TextSplit | None
    classes: list[str]
    vocab: Vocabulary
    seq_len: int

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __repr__(self) -> str:
        test = "None" if self.test is None else str(len(self.test))
        return (
            f"TextDataset(name={self.name!r}, train={len(self.train)}, val={len(self.val)}, test={test}, "
            f"num_classes={self.num_classes}, vocab={len(self.vocab)}, seq_len={self.seq_len})"
        )


@dataclass
class RawText:
    """What a reader found: (text, class index) pairs per split. `val` is the files' own validation split."""

    train: list[Example]
    test: list[Example] | None
    classes: list[str]
    val: list[Example] | None = None


# -----------------------------------------------------------------------------
# reading files: every malformed record becomes DatasetError("file:line: reason")


class _BadRecord(Exception):
    """Raised by a record parser; `_parse` adds the file and line."""


def _read_text(path: Path, encoding: str = "utf-8-sig", fallback: bool = False) -> str:
    """The text of ``path``; with ``fallback`` a file that is not UTF-8 is read as Windows-1252 (old corpora
    of one text per file often are), else it is an error naming the line."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise DatasetError(f"cannot read {path}: {err}") from err
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as err:
        if not fallback:
            line = data[: err.start].count(b"\n") + 1
            name = "UTF-8" if encoding.startswith("utf-8") else encoding
            raise DatasetError(f"{path}:{line}: not {name} text ({err.reason})") from err
    logger.warning("%s is not UTF-8 text: read as Windows-1252 (Latin-1)", path)
    return data.decode("cp1252", errors="replace")


def _lines(path: Path, encoding: str = "utf-8-sig") -> list[tuple[int, str]]:
    """(line number, stripped line) of the non-blank lines (split at \\n only, as JSON strings may hold U+2028)."""
    lines = _read_text(path, encoding).split("\n")
    return [(n, line.strip()) for n, line in enumerate(lines, 1) if line.strip()]


def _rows(path: Path, delimiter: str) -> list[tuple[int, list[str]]]:
    """(line number, fields) of the non-blank rows of a CSV (quoted fields) or TSV (no quoting) file."""
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    reader = csv.reader(io.StringIO(_read_text(path), newline=""), delimiter=delimiter, quoting=quoting)
    rows = []
    try:
        for row in reader:
            if any(f.strip() for f in row):
                rows.append((reader.line_num, row))
    except csv.Error as err:
        raise DatasetError(f"{path}:{reader.line_num}: {err}") from err
    return rows


def _parse(path: Path, records: Iterable[tuple[int, R]], parse: Callable[[R], T]) -> list[T]:
    out = []
    for line, record in records:
        try:
            out.append(parse(record))
        except _BadRecord as err:
            raise DatasetError(f"{path}:{line}: {err}") from None
    return out


def _first_line(path: Path) -> str:
    try:
        with path.open(encoding="utf-8-sig", errors="replace") as f:
            return f.readline().strip()
    except OSError:
        return ""


def _known_labels(index: dict[str, int], what: str, among: str = "") -> Callable[[str], int]:
    """A label parser accepting only the keys of `index` (stripped), for files whose classes are known."""

    def label_of(value: str) -> int:
        key = value.strip()
        if key not in index:
            shown = list(index) if len(index) <= 20 else [*list(index)[:20], "..."]
            raise _BadRecord(f"{what} {value!r} is not one of {among}{shown}")
        return index[key]

    return label_of


def _any_label(value: str) -> str:
    """The label parser of a training file whose classes are its labels: any non-empty string."""
    if not value.strip():
        raise _BadRecord("empty label")
    return value.strip()


def _sorted_labels(labels: Iterable[str]) -> list[str]:
    """Sorted unique labels; numerically when all are numbers ("2" < "10")."""
    unique = set(labels)
    try:
        return sorted(unique, key=lambda s: (float(s), s))
    except ValueError:
        return sorted(unique)


def _require(path: Path, what: str) -> Path:
    if not path.is_file():
        raise DatasetError(f"{what}: expected {path.name} in {path.parent}")
    return path


# -----------------------------------------------------------------------------
# AG News / DBpedia (Zhang et al. 2015 CSVs: "class index","title","text")

_ZHANG_ESCAPE_RE = re.compile(r"\\(n|\"|\\)")
_ZHANG_ESCAPES = {"n": "\n", '"': '"', "\\": "\\"}


def _zhang_classes(path: Path) -> list[str] | None:
    if not (path / "classes.txt").is_file():
        return None
    return [line for _, line in _lines(path / "classes.txt")]


def _read_zhang(name: str, path: Path) -> RawText:
    """AG News / DBpedia: train.csv and test.csv rows `class index (1-based), title, text`; text = title + " " +
    text with the files' `\\n`, `\\"` and `\\\\` escapes undone. Class names from classes.txt if present."""
    classes = _zhang_classes(path) or list(AGNEWS_CLASSES if name == "agnews" else DBPEDIA_CLASSES)
    label_of = _known_labels({str(i): i - 1 for i in range(1, len(classes) + 1)}, "class index")

    def parse(row: list[str]) -> Example:
        if len(row) < 2:
            raise _BadRecord(f"expected 'class index, title, text', got {len(row)} field(s)")
        text = " ".join(_ZHANG_ESCAPE_RE.sub(lambda m: _ZHANG_ESCAPES[m.group(1)], f) for f in row[1:])
        return text, label_of(row[0])

    files = [_require(path / f, name) for f in ("train.csv", "test.csv")]
    train, test = (_parse(p, _rows(p, ","), parse) for p in files)
    return RawText(train=train, test=test, classes=classes)


def _detect_zhang(path: Path) -> str | None:
    if not ((path / "train.csv").is_file() and (path / "test.csv").is_file()):
        return None
    first = next(csv.reader([_first_line(path / "train.csv")]), [])
    if len(first) < 2 or not first[0].strip().isdigit():
        return None  # a header row: a generic CSV
    classes = _zhang_classes(path)
    if classes is not None:
        num_classes = len(classes)
    else:
        indices = [row[0].strip() for _, row in _rows(path / "test.csv", ",")]
        num_classes = max((int(i) for i in indices if i.isdigit()), default=0)
    return "agnews" if num_classes <= len(AGNEWS_CLASSES) else "dbpedia"


# -----------------------------------------------------------------------------
# TREC (Li & Roth: "LABEL:fine question words ...", latin-1)


def _read_trec(path: Path, fine: bool) -> RawText:
    """TREC question classification: train_5500.label and TREC_10.label; the 6 coarse labels, or with `fine`
    the 50 `COARSE:fine` labels."""
    classes = TREC_FINE_CLASSES if fine else TREC_COARSE_CLASSES
    label_of = _known_labels({c: i for i, c in enumerate(classes)}, "label")

    def parse(line: str) -> Example:
        label, _, question = line.partition(" ")
        if ":" not in label:
            raise _BadRecord(f"expected 'COARSE:fine question ...', got {line[:40]!r}")
        return question.strip(), label_of(label if fine else label.split(":")[0])

    files = [_require(path / f, "trec") for f in ("train_5500.label", "TREC_10.label")]
    train, test = (_parse(p, _lines(p, "latin-1"), parse) for p in files)
    return RawText(train=train, test=test, classes=list(classes))


# -----------------------------------------------------------------------------
# SST-2 (GLUE TSV) and SST-5 (PTB trees)

_TREE_START_RE = re.compile(r"\(\s*\d")
_TREE_TOKEN_RE = re.compile(r"\(|\)|[^\s()]+")
_PTB_ESCAPES = {"-LRB-": "(", "-RRB-": ")", "-LSB-": "[", "-RSB-": "]", "-LCB-": "{", "-RCB-": "}",
                "``": '"', "''": '"', "\\/": "/", "\\*": "*"}  # fmt: skip


def _parse_tree(line: str) -> tuple[str, str]:
    """(sentence, root label) of one PTB tree `(3 (2 It) (4 ...))`: the leaves joined by spaces, unescaped."""
    tokens = _TREE_TOKEN_RE.findall(line)
    if not tokens or tokens[0] != "(":
        raise _BadRecord(f"expected a tree '(label ...)', got {line[:40]!r}")
    depth, root, leaves, want_label = 0, None, [], False
    for tok in tokens:
        if want_label:
            if tok in "()":
                raise _BadRecord("expected a label after '('")
            root = tok if root is None else root
            want_label = False
        elif tok == "(":
            if depth == 0 and root is not None:
                raise _BadRecord("text after the end of the tree")
            depth, want_label = depth + 1, True
        elif tok == ")":
            depth -= 1
            if depth < 0:
                raise _BadRecord("unbalanced tree: a ')' closes nothing")
        elif depth == 0:
            raise _BadRecord("text after the end of the tree")
        else:
            leaves.append(_PTB_ESCAPES.get(tok, tok))
    if depth or want_label:
        raise _BadRecord(f"unbalanced tree: {depth} '(' left open")
    return " ".join(leaves), root


def _read_sst5(path: Path) -> RawText:
    """SST-5: train.txt, dev.txt, test.txt of PTB trees; the root label 0..4 is the class, dev the val split."""
    label_of = _known_labels({str(i): i for i in range(len(SST5_CLASSES))}, "root label")

    def parse(line: str) -> Example:
        sentence, root = _parse_tree(line)
        return sentence, label_of(root)

    files = [_require(path / f, "sst5") for f in ("train.txt", "dev.txt", "test.txt")]
    train, val, test = (_parse(p, _lines(p), parse) for p in files)
    return RawText(train=train, val=val, test=test, classes=list(SST5_CLASSES))


def _read_sst2(path: Path) -> RawText:
    """SST-2 as GLUE ships it: train.tsv and dev.tsv with a `sentence<TAB>label` header. GLUE's test.tsv has no
    labels, so dev is the test split (the validation split is carved out of train); a labeled test.tsv is used."""
    label_of = _known_labels({"0": 0, "1": 1}, "label")
    files = [_require(path / f, "sst2") for f in ("train.tsv", "dev.tsv")]
    train, dev = (_read_table(p, "tsv", "sentence", "label", label_of) for p in files)
    test_file = path / "test.tsv"
    if test_file.is_file() and "label" in _first_line(test_file).split("\t"):
        test = _read_table(test_file, "tsv", "sentence", "label", label_of)
        return RawText(train=train, val=dev, test=test, classes=list(SST2_CLASSES))
    return RawText(train=train, test=dev, classes=list(SST2_CLASSES))


def _detect_sst(path: Path) -> str | None:
    if all((path / f).is_file() for f in ("train.txt", "dev.txt", "test.txt")):
        if _TREE_START_RE.match(_first_line(path / "train.txt")):
            return "sst5"
    if (path / "dev.tsv").is_file() and (path / "train.tsv").is_file():
        if {"sentence", "label"} <= set(_first_line(path / "train.tsv").split("\t")):
            return "sst2"
    return None


# -----------------------------------------------------------------------------
# class folders of .txt files (IMDb, and the image folder rules of readers.read_folder)


def _read_class_files(root: Path, classes: list[str]) -> list[Example]:
    """The .txt files under root/<class>/ (recursively, sorted), each one example."""
    examples = []
    for label, cls in enumerate(classes):
        if (root / cls).is_dir():
            files = sorted(p for p in (root / cls).rglob("*") if p.suffix.lower() in TEXT_EXTENSIONS and p.is_file())
            examples += [(_read_text(f, fallback=True), label) for f in files]
    return examples


def _imdb_root(path: Path) -> Path | None:
    """The aclImdb folder: `path` itself or its aclImdb/ subfolder (the one holding train/pos and train/neg)."""
    for root in (path / "aclImdb", path):
        if all((root / "train" / c).is_dir() for c in IMDB_CLASSES):
            return root
    return None


def _read_imdb(path: Path) -> RawText:
    """IMDb reviews: aclImdb/{train,test}/{neg,pos}/*.txt (`path` is aclImdb or its parent); unsup/ is ignored."""
    root = _imdb_root(path)
    if root is None or not all((root / "test" / c).is_dir() for c in IMDB_CLASSES):
        raise DatasetError(f"imdb: expected aclImdb/ with train/pos, train/neg, test/pos, test/neg in {path}")
    train, test = (_read_class_files(root / split, IMDB_CLASSES) for split in ("train", "test"))
    return RawText(train=train, test=test, classes=list(IMDB_CLASSES))


def _text_folder_split(root: Path, classes: list[str]) -> list[Example]:
    check_split_classes(root, classes, "text_folder")
    return _read_class_files(root, classes)


def _read_text_folder(path: Path) -> RawText:
    """path/train/<class>/*.txt with path/val (or valid)/<class> and/or path/test/<class>, or, without train/,
    path/<class>/*.txt. Classes are the sorted folder names of the train split; every file is one example."""
    train_root, classes = class_folder_layout(path, "text_folder", "*.txt")
    has_train, train_root = train_root is not None, train_root or path
    train = _text_folder_split(train_root, classes)
    if not train:
        raise DatasetError(f"text_folder: found no {', '.join(TEXT_EXTENSIONS)} files under {train_root}")
    splits: dict[str, list[Example] | None] = {"val": None, "test": None}
    if has_train:
        for split, folders in (("val", ("val", "valid")), ("test", ("test",))):
            found = [path / f for f in folders if (path / f).is_dir()]
            if found:
                splits[split] = _text_folder_split(found[0], classes)
    return RawText(train=train, val=splits["val"], test=splits["test"], classes=classes)


def _is_text_folder(path: Path, probe: int = 100) -> bool:
    """Class folders whose first `probe` files include .txt files and no images."""
    root = path / "train" if (path / "train").is_dir() else path
    files = (f for cls in class_dirs(root) for f in (root / cls).rglob("*")
             if not f.name.startswith(".") and f.is_file())  # fmt: skip
    suffixes = {f.suffix.lower() for f in itertools.islice(files, probe)}
    return bool(suffixes & set(TEXT_EXTENSIONS)) and not suffixes & set(IMAGE_EXTENSIONS)


# -----------------------------------------------------------------------------
# generic CSV / TSV / JSONL with named columns

_TABLE_DELIMITERS = {"csv": ",", "tsv": "\t"}
_VAL_STEMS = ("val", "valid", "dev")


def _read_table(
    path: Path, fmt: str, text_column: str, label_column: str, label_of: Callable[[str], T]
) -> list[tuple[str, T]]:
    """(text, label_of(label)) of every record of a CSV/TSV file with a header row, or of a JSONL file."""
    if fmt == "jsonl":

        def parse_json(line: str) -> tuple[str, T]:
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise _BadRecord(f"not JSON: {err.msg}") from None
            if not isinstance(obj, dict):
                raise _BadRecord(f"expected a JSON object, got {type(obj).__name__}")
            missing = [k for k in (text_column, label_column) if k not in obj]
            if missing:
                raise _BadRecord(f"no key {missing[0]!r} (keys: {sorted(obj)})")
            text, label = obj[text_column], obj[label_column]
            if not isinstance(text, str):
                raise _BadRecord(f"{text_column!r} must be a string, got {type(text).__name__}")
            if isinstance(label, bool) or not isinstance(label, (str, int, float)):
                raise _BadRecord(f"{label_column!r} must be a string or a number, got {json.dumps(label)}")
            return text, label_of(str(label))

        return _parse(path, _lines(path), parse_json)

    rows = _rows(path, _TABLE_DELIMITERS[fmt])
    if not rows:
        raise DatasetError(f"{path}: empty file; expected a header row naming {text_column!r} and {label_column!r}")
    header_line, header = rows[0]
    header = [h.strip() for h in header]
    for column, option in ((text_column, "text_column"), (label_column, "label_column")):
        if column not in header:
            raise DatasetError(f"{path}:{header_line}: no column {column!r} in the header {header}; set {option} "
                               f"(--{option.replace('_', '-')})")
    text_at, label_at = header.index(text_column), header.index(label_column)

    def parse_row(row: list[str]) -> tuple[str, T]:
        if len(row) <= max(text_at, label_at):
            raise _BadRecord(f"expected {len(header)} fields like the header, got {len(row)}")
        return row[text_at], label_of(row[label_at])

    return _parse(path, rows[1:], parse_row)


def _table_files(fmt: str, path: Path) -> dict[str, Path]:
    """The files of a generic dataset: `path` itself (all train), or train.*, val.* (valid/dev) and test.*."""
    ext = f".{fmt}"
    if path.is_file():
        return {"train": path}
    files = {"train": path / f"train{ext}"}
    if not files["train"].is_file():
        raise DatasetError(f"{fmt}: expected a {ext} file, or a folder holding train{ext} (and test{ext}, "
                           f"val{ext}) at {path}")  # fmt: skip
    val = [path / f"{stem}{ext}" for stem in _VAL_STEMS if (path / f"{stem}{ext}").is_file()]
    if val:
        files["val"] = val[0]
    if (path / f"test{ext}").is_file():
        files["test"] = path / f"test{ext}"
    return files


def _read_generic(fmt: str, path: Path, text_column: str, label_column: str) -> RawText:
    """Records with a text and a string label; the classes are the sorted labels of the training file, and a
    label of val/test that is not among them is an error."""
    files = _table_files(fmt, path)
    pairs = _read_table(files["train"], fmt, text_column, label_column, _any_label)
    classes = _sorted_labels(label for _, label in pairs)
    index = {c: i for i, c in enumerate(classes)}
    known = _known_labels(index, "label", among="the training labels ")
    splits = {s: _read_table(files[s], fmt, text_column, label_column, known) for s in ("val", "test") if s in files}
    train = [(text, index[label]) for text, label in pairs]
    return RawText(train=train, val=splits.get("val"), test=splits.get("test"), classes=classes)


def _detect_generic(path: Path) -> str | None:
    for fmt in ("csv", "tsv", "jsonl"):
        if (path.is_file() and path.suffix.lower() == f".{fmt}") or (path / f"train.{fmt}").is_file():
            return fmt
    return None


# -----------------------------------------------------------------------------
# detection, reading, loading

_ALIASES = {"ag_news": "agnews", "dbpedia_14": "dbpedia", "sst_2": "sst2", "sst_5": "sst5", "textfolder": "text_folder",
            "ndjson": "jsonl"}  # fmt: skip


def text_dataset_name(name: str) -> str | None:
    """The canonical name of text dataset ``name`` (aliases such as ``ag-news`` included), None if it is not one."""
    key = name.strip().lower().replace("-", "_")
    key = _ALIASES.get(key, key)
    return key if key in TEXT_DATASET_NAMES else None


def _normalize_name(name: str) -> str:
    key = text_dataset_name(name)
    if key is None:
        raise DatasetError(f"unknown text dataset {name!r}; known names: {', '.join(TEXT_DATASET_NAMES)}")
    return key


def detect_text_dataset(path: str | Path) -> str | None:
    """The text dataset name (in TEXT_DATASET_NAMES) that the files at `path` look like, or None if they are not
    a text dataset (a missing path, an image folder, CIFAR files, ...)."""
    path = Path(path).expanduser()
    if not path.exists():
        return None
    if path.is_file():
        return _detect_generic(path)
    if _imdb_root(path) is not None and (path.name == "aclImdb" or (path / "aclImdb").is_dir()
                                         or (path / "imdb.vocab").is_file()):  # fmt: skip
        return "imdb"
    if (path / "train_5500.label").is_file():
        return "trec"
    return _detect_sst(path) or _detect_zhang(path) or _detect_generic(path) or (
        "text_folder" if _is_text_folder(path) else None
    )


def read_text_dataset(
    name: str,
    path: str | Path,
    *,
    text_column: str = "text",
    label_column: str = "label",
    trec_fine: bool = False,
) -> RawText:
    """Read the examples of dataset `name` (one of TEXT_DATASET_NAMES) from the files at `path`.

    text_column / label_column: the columns (CSV/TSV header names, JSONL keys) of csv / tsv / jsonl data.
    trec_fine: TREC's 50 fine labels instead of the 6 coarse ones.
    """
    key = _normalize_name(name)
    path = Path(path).expanduser()
    if not path.exists():
        raise DatasetError(f"{key}: the path {path} does not exist")
    if key in ("agnews", "dbpedia"):
        return _read_zhang(key, path)
    if key == "trec":
        return _read_trec(path, trec_fine)
    if key == "sst2":
        return _read_sst2(path)
    if key == "sst5":
        return _read_sst5(path)
    if key == "imdb":
        return _read_imdb(path)
    if key == "text_folder":
        return _read_text_folder(path)
    return _read_generic(key, path, text_column, label_column)


def _relabel(raw: RawText, classes: list[str], name: str) -> RawText:
    """`raw` with its labels mapped by name onto `classes` (a saved model's class list)."""
    if len(set(classes)) != len(classes):
        raise ConfigError(f"classes: repeated names in {classes}")
    index = {c: i for i, c in enumerate(classes)}
    splits = [s for s in (raw.train, raw.val, raw.test) if s is not None]
    unknown = sorted({raw.classes[label] for split in splits for _, label in split} - index.keys())
    if unknown:
        raise DatasetError(f"{name}: the data has labels {unknown} that are not among the given classes {classes}")
    lut = [index.get(c, -1) for c in raw.classes]

    def mapped(split: list[Example] | None) -> list[Example] | None:
        return None if split is None else [(text, lut[label]) for text, label in split]

    return RawText(train=mapped(raw.train), val=mapped(raw.val), test=mapped(raw.test), classes=list(classes))


def load_text_dataset(
    name: str | None,
    path: str | Path,
    *,
    val_fraction: float = 0.1,
    seed: int = 0,
    seq_len: int = 64,
    min_freq: int = 1,
    max_vocab: int | None = None,
    vocab: Vocabulary | None = None,
    text_column: str = "text",
    label_column: str = "label",
    trec_fine: bool = False,
    classes: list[str] | None = None,
) -> TextDataset:
    """Load a text classification dataset into padded id tensors.

    name: one of TEXT_DATASET_NAMES, or None to detect it from the files at `path`.
    val_fraction: when the files have no validation split of their own, a stratified, seeded (`seed`) fraction
      of train becomes `val` (and `test` stays the test split); with 0 the test split is used as `val`, and data
      without a test split is split 80/20 (as `load_dataset` does for images).
    seq_len: every text is truncated / right-padded (PAD) to this many tokens.
    min_freq, max_vocab: the vocabulary built from the training split (after the validation split is taken out).
    vocab: a saved model's vocabulary, used as it is instead (words it lacks become UNK).
    classes: a saved model's class list: the data's labels are mapped onto it by name.
    text_column, label_column, trec_fine: see `read_text_dataset`.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"load_text_dataset: val_fraction must be in [0, 1), got {val_fraction}")
    if not isinstance(seq_len, int) or seq_len < 1:
        raise ConfigError(f"load_text_dataset: seq_len must be a positive int, got {seq_len!r}")
    data_path = Path(path).expanduser()
    if name is None:
        if not data_path.exists():
            raise DatasetError(f"dataset path {data_path} does not exist")
        key = detect_text_dataset(data_path)
        if key is None:
            raise DatasetError(
                f"cannot tell which text dataset is in {data_path}: expected AG News/DBpedia CSVs, TREC .label "
                f"files, SST files, aclImdb, class folders of .txt files or train.csv/.tsv/.jsonl; pass the dataset "
                f"name ({', '.join(TEXT_DATASET_NAMES)})"
            )
    else:
        key = _normalize_name(name)
    raw = read_text_dataset(key, data_path, text_column=text_column, label_column=label_column, trec_fine=trec_fine)
    if not raw.train:
        raise DatasetError(f"{key}: found no training examples in {data_path}")
    if classes is not None:
        raw = _relabel(raw, list(classes), key)
    elif len(raw.classes) < 2:
        raise DatasetError(f"{key}: {data_path} needs at least two classes to learn, found only {raw.classes}")

    train, val, test = raw.train, raw.val, raw.test
    if val is not None:
        logger.info("%s: using the files' own validation split (val_fraction is not used)", key)
    elif test is not None and val_fraction == 0:
        val, test = test, None  # the test split doubles as the validation split
    else:
        if key == "text_folder" and test is None and val_fraction == 0 and (data_path / "train").is_dir():
            raise DatasetError(f"text_folder: expected {data_path}/val or {data_path}/test next to "
                               f"{data_path}/train (or pass val_fraction > 0)")  # fmt: skip
        labels = torch.tensor([label for _, label in train], dtype=torch.int64)
        train_idx, val_idx = stratified_split(labels, val_fraction if val_fraction > 0 else 0.2, seed)
        train, val = [train[i] for i in train_idx.tolist()], [train[i] for i in val_idx.tolist()]

    train_tokens = [tokenize(text) for text, _ in train]
    if vocab is None:
        vocab = _vocab_from_counts(_count_tokens(train_tokens), min_freq, max_vocab)

    def to_split(examples: list[Example], tokens: list[list[str]] | None = None) -> TextSplit:
        texts = [text for text, _ in examples]
        ids, lengths = _encode_token_lists([tokenize(t) for t in texts] if tokens is None else tokens, vocab, seq_len)
        labels = torch.tensor([label for _, label in examples], dtype=torch.int64)
        return TextSplit(ids=ids, lengths=lengths, labels=labels, texts=texts)

    dataset = TextDataset(
        name=key,
        train=to_split(train, train_tokens),
        val=to_split(val),
        test=None if test is None else to_split(test),
        classes=list(raw.classes),
        vocab=vocab,
        seq_len=seq_len,
    )
    logger.info("%s: %d train, %d val, %s test examples; %d classes; vocabulary of %d tokens", key,
                len(dataset.train), len(dataset.val), "no" if test is None else len(dataset.test),
                dataset.num_classes, len(vocab))  # fmt: skip
    return dataset
