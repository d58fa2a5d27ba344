"""Text data: tokenizer, vocabulary, padding, and every reader on tiny corpora written by the tests."""

import json
import logging
import subprocess
import sys

import pytest
import torch

from compact_transformers.data import DatasetError
from compact_transformers.data.text import (
    PAD,
    TEXT_DATASET_NAMES,
    TOKENIZER,
    TREC_FINE_CLASSES,
    UNK,
    TextDataset,
    TextSplit,
    Vocabulary,
    detect_text_dataset,
    encode_texts,
    load_text_dataset,
    read_text_dataset,
    tokenize,
)
from compact_transformers.errors import ConfigError


def _write(path, text, encoding="utf-8"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode(encoding))
    return path


def _texts(split):
    return sorted(zip(split.texts, split.labels.tolist()))


# -----------------------------------------------------------------------------
# tokenizer, vocabulary, padding


def test_tokenize_rule():
    assert tokenize("It's <br />GREAT, isn't it?!") == ["it", "'s", "great", ",", "is", "n't", "it", "?", "!"]
    # the Penn Treebank clitics split off as GloVe's tokenizer does; other inner apostrophes stay
    assert tokenize("I'm sure we'll go, can't you? o'clock") == [
        "i", "'m", "sure", "we", "'ll", "go", ",", "ca", "n't", "you", "?", "o'clock"]  # fmt: skip
    assert tokenize("one<br/>two<BR>three") == ["one", "two", "three"]
    assert tokenize("Café_au-lait costs $3.50") == ["café", "_", "au", "-", "lait", "costs", "$", "3", ".", "50"]
    assert tokenize("don\u2019t 'quote' rock'n'roll") == ["do", "n't", "'", "quote", "'", "rock'n'roll"]
    assert tokenize("  \t\n ") == [] and tokenize("") == []
    assert TOKENIZER == "words-v1" and (UNK, PAD) == (0, 1)


def test_vocabulary_order_min_freq_and_max_size():
    texts = ["b a c", "c b", "c d", "Zed"]
    vocab = Vocabulary.build(texts)
    # frequency descending (c:3, b:2), then alphabetical among ties (a, d, zed: 1 each)
    assert vocab.tokens == ["<unk>", "<pad>", "c", "b", "a", "d", "zed"]
    assert Vocabulary.build(reversed(texts)).tokens == vocab.tokens  # order of the texts does not matter
    assert Vocabulary.build(texts, min_freq=2).tokens == ["<unk>", "<pad>", "c", "b"]
    assert Vocabulary.build(texts, max_size=4).tokens == ["<unk>", "<pad>", "c", "b"]
    assert len(Vocabulary.build(texts, max_size=2)) == 2
    assert vocab.id("c") == 2 and vocab.id("never") == UNK and vocab.id("<pad>") == PAD
    assert vocab.encode("C, zed!") == [2, UNK, 6, UNK]
    with pytest.raises(ConfigError, match="max_size"):
        Vocabulary.build(texts, max_size=1)
    with pytest.raises(ConfigError, match="min_freq"):
        Vocabulary.build(texts, min_freq=0)


def test_vocabulary_dict_round_trip_and_errors():
    vocab = Vocabulary.build(["x y y"])
    data = json.loads(json.dumps(vocab.to_dict()))
    assert data == {"tokenizer": "words-v1", "tokens": ["<unk>", "<pad>", "y", "x"]}
    assert Vocabulary.from_dict(data) == vocab
    with pytest.raises(ConfigError, match="tokenizer 'bpe'"):
        Vocabulary.from_dict({"tokenizer": "bpe", "tokens": data["tokens"]})
    with pytest.raises(ConfigError, match="start with"):
        Vocabulary.from_dict({"tokenizer": TOKENIZER, "tokens": ["x", "y"]})
    with pytest.raises(ConfigError, match="repeated"):
        Vocabulary(tokens=["<unk>", "<pad>", "x", "x"])


def test_encode_texts_pads_truncates_and_masks():
    vocab = Vocabulary.build(["a b c d e f"])
    ids, lengths = encode_texts(["a b c", "", "a b c d e f", "a zz"], vocab, seq_len=4)
    a, b, c, d = (vocab.id(t) for t in "abcd")
    assert ids.dtype == torch.int64 and lengths.dtype == torch.int64
    assert ids.tolist() == [[a, b, c, PAD], [PAD] * 4, [a, b, c, d], [a, UNK, PAD, PAD]]
    assert lengths.tolist() == [3, 0, 4, 2]
    split = TextSplit(ids=ids, lengths=lengths, labels=torch.arange(4), texts=["t0", "t1", "t2", "t3"])
    assert split.mask.tolist()[0] == [True, True, True, False] and not split.mask[1].any()
    assert torch.equal(split.mask, ids != PAD)  # no real token here is PAD
    sub = split.select(torch.tensor([3, 0]))
    assert sub.labels.tolist() == [3, 0] and sub.texts == ["t3", "t0"] and sub.lengths.tolist() == [2, 3]
    assert len(sub) == 2 and torch.equal(sub.ids[1], ids[0])
    with pytest.raises(ConfigError, match="seq_len"):
        encode_texts(["a"], vocab, seq_len=0)
    with pytest.raises(ValueError, match="lengths"):
        TextSplit(ids=ids, lengths=lengths[:3], labels=torch.arange(4))
    with pytest.raises(ValueError, match=r"\[0, 4\]"):
        TextSplit(ids=ids, lengths=lengths + 1, labels=torch.arange(4))
    with pytest.raises(ValueError, match="texts"):
        TextSplit(ids=ids, lengths=lengths, labels=torch.arange(4), texts=["only one"])


# -----------------------------------------------------------------------------
# AG News / DBpedia

_AG_TRAIN = (
    '"3","Wall St. Bears","Reuters - Short-sellers, Wall Street\'s dwindling band"\n'
    '"4","Bugs, Beetles","Line one\\nline two with a \\""quote\\"" and C:\\\\dir"\n'
    '"1","Peace talks","Leaders met"\n'
    '"2","Final","A ""great"" match"\n'
)


def test_agnews_reads_unescapes_and_detects(tmp_path):
    _write(tmp_path / "train.csv", _AG_TRAIN)
    _write(tmp_path / "test.csv", '"2","Cup","Goal"\n"1","Vote","Polls"\n')
    assert detect_text_dataset(tmp_path) == "agnews"
    raw = read_text_dataset("ag-news", tmp_path)
    assert raw.classes == ["World", "Sports", "Business", "Sci/Tech"] and raw.val is None
    assert raw.train[0] == ("Wall St. Bears Reuters - Short-sellers, Wall Street's dwindling band", 2)
    assert raw.train[1] == ('Bugs, Beetles Line one\nline two with a "quote" and C:\\dir', 3)
    assert raw.train[3] == ('Final A "great" match', 1)
    assert raw.test == [("Cup Goal", 1), ("Vote Polls", 0)]
    ds = load_text_dataset(None, tmp_path, val_fraction=0.0)
    assert ds.name == "agnews" and len(ds.train) == 4 and len(ds.val) == 2 and ds.test is None


@pytest.mark.parametrize("bad, reason", [('"x","t","u"', "class index 'x'"), ('"5","t","u"', "class index '5'"),
                                         ('"3"', "1 field")])  # fmt: skip
def test_agnews_malformed_row(tmp_path, bad, reason):
    _write(tmp_path / "train.csv", _AG_TRAIN + bad + "\n")
    _write(tmp_path / "test.csv", '"2","Cup","Goal"\n')
    with pytest.raises(DatasetError, match=f"train.csv:5: .*{reason}"):
        read_text_dataset("agnews", tmp_path)


def test_agnews_missing_test_file(tmp_path):
    _write(tmp_path / "train.csv", _AG_TRAIN)
    with pytest.raises(DatasetError, match=f"agnews: expected test.csv in {tmp_path}"):
        read_text_dataset("agnews", tmp_path)


def test_dbpedia_classes_file_and_detection(tmp_path):
    rows = "".join(f'{c},"Title {c}","Body {c}"\n' for c in range(1, 15))
    _write(tmp_path / "train.csv", rows)
    _write(tmp_path / "test.csv", '14,"T","B"\n')
    assert detect_text_dataset(tmp_path) == "dbpedia"  # 14 classes in test.csv, no classes.txt
    assert read_text_dataset("dbpedia", tmp_path).classes[:2] == ["Company", "EducationalInstitution"]
    names = [f"Kind{c}" for c in range(14)]
    _write(tmp_path / "classes.txt", "\n".join(names) + "\n")
    raw = read_text_dataset("dbpedia", tmp_path)
    assert raw.classes == names and raw.train[13] == ("Title 14 Body 14", 13)
    _write(tmp_path / "classes.txt", "World\nSports\nBusiness\nSci/Tech\n")
    assert detect_text_dataset(tmp_path) == "agnews"  # classes.txt decides
    with pytest.raises(DatasetError, match=r"train.csv:5: class index '5'"):
        read_text_dataset("agnews", tmp_path)


# -----------------------------------------------------------------------------
# TREC

_TREC_TRAIN = (
    "DESC:manner How did serfdom develop in and then leave Russia ?\n"
    "ENTY:cremat What films featured the character Popeye Doyle ?\n"
    "\n"
    "HUM:ind Who killed Gandhi ?\n"
    "NUM:date When was Caf\xe9 society born ?\n"
    "LOC:city What is the capital of Peru ?\n"
    "ABBR:exp What does NASA stand for ?\n"
)


def _trec(root, train=_TREC_TRAIN):
    _write(root / "train_5500.label", train, encoding="latin-1")
    _write(root / "TREC_10.label", "NUM:dist How far is it from Denver to Aspen ?\nLOC:other Where is Perth ?\n",
           encoding="latin-1")  # fmt: skip


def test_trec_coarse_and_fine(tmp_path):
    _trec(tmp_path)
    assert detect_text_dataset(tmp_path) == "trec"
    coarse = read_text_dataset("trec", tmp_path)
    assert coarse.classes == ["ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"]
    assert [label for _, label in coarse.train] == [1, 2, 3, 5, 4, 0]
    assert coarse.train[3] == ("When was Café society born ?", 5)  # latin-1
    assert [label for _, label in coarse.test] == [5, 4]
    fine = read_text_dataset("trec", tmp_path, trec_fine=True)
    assert len(fine.classes) == 50 and fine.classes == TREC_FINE_CLASSES
    assert [fine.classes[label] for _, label in fine.train] == [
        "DESC:manner", "ENTY:cremat", "HUM:ind", "NUM:date", "LOC:city", "ABBR:exp"]  # fmt: skip
    assert fine.test[1] == ("Where is Perth ?", fine.classes.index("LOC:other"))
    ds = load_text_dataset("trec", tmp_path, trec_fine=True, val_fraction=0.0)
    assert ds.num_classes == 50 and len(ds.val) == 2 and ds.test is None


@pytest.mark.parametrize("bad, reason", [("DESC How did it go ?", "expected 'COARSE:fine"),
                                         ("COLOR:red What color ?", "label 'COLOR'")])  # fmt: skip
def test_trec_malformed_line(tmp_path, bad, reason):
    _trec(tmp_path, _TREC_TRAIN + bad + "\n")
    with pytest.raises(DatasetError, match=f"train_5500.label:8: {reason}"):
        read_text_dataset("trec", tmp_path)


def test_trec_fine_label_outside_the_taxonomy(tmp_path):
    _trec(tmp_path, _TREC_TRAIN + "NUM:shoe What size ?\n")
    assert len(read_text_dataset("trec", tmp_path).train) == 7  # coarse NUM is fine
    with pytest.raises(DatasetError, match="train_5500.label:8: label 'NUM:shoe'"):
        read_text_dataset("trec", tmp_path, trec_fine=True)


# -----------------------------------------------------------------------------
# SST-2 (GLUE) and SST-5 (trees)


def _sst2(root, test_header="index\tsentence"):
    rows = [f"{'good fun' if i % 2 else 'dull mess'} number {i} \t{i % 2}" for i in range(10)]
    _write(root / "train.tsv", "sentence\tlabel\n" + "\n".join(rows) + "\n")
    _write(root / "dev.tsv", 'sentence\tlabel\n"quoted" good\t1\nbad\t0\n')
    if test_header:
        _write(root / "test.tsv", f"{test_header}\n0\tunlabeled one\n1\tunlabeled two\n")


def test_sst2_glue_test_has_no_labels(tmp_path):
    _sst2(tmp_path)
    assert detect_text_dataset(tmp_path) == "sst2"
    raw = read_text_dataset("sst2", tmp_path)
    assert raw.classes == ["negative", "positive"] and raw.val is None
    assert raw.test == [('"quoted" good', 1), ("bad", 0)]  # dev is the test split; TSV has no quoting
    ds = load_text_dataset(None, tmp_path, val_fraction=0.2, seed=3)
    assert len(ds.train) == 8 and len(ds.val) == 2 and ds.test.texts == ['"quoted" good', "bad"]
    assert sorted(ds.val.labels.tolist()) == [0, 1]  # stratified


def test_sst2_labeled_test_and_bad_label(tmp_path):
    _sst2(tmp_path, test_header="sentence\tlabel")
    _write(tmp_path / "test.tsv", "sentence\tlabel\nfine\t1\n")
    raw = read_text_dataset("sst2", tmp_path)
    assert raw.val == [('"quoted" good', 1), ("bad", 0)] and raw.test == [("fine", 1)]
    _write(tmp_path / "dev.tsv", "sentence\tlabel\nok\t1\nweird\t2\n")
    with pytest.raises(DatasetError, match=r"dev.tsv:3: label '2' is not one of \['0', '1'\]"):
        read_text_dataset("sst2", tmp_path)


_SST5_TRAIN = (
    "(3 (2 It) (4 (4 (2 's) (4 (3 (2 a) (4 (3 lot) (2 (2 of) (2 fun)))))) (2 .)))\n"
    "(0 (1 -LRB-) (0 (0 awful) (2 -RRB-)))\n"
    "(1 (2 a) (1 \\/ mess))\n"
    "(2 (2 fine))\n"
    "(4 (4 great))\n"
)


def _sst5(root, train=_SST5_TRAIN):
    _write(root / "train.txt", train)
    _write(root / "dev.txt", "(4 (4 superb))\n(0 (0 bad))\n")
    _write(root / "test.txt", "(2 (2 meh))\n")


def test_sst5_trees(tmp_path):
    _sst5(tmp_path)
    assert detect_text_dataset(tmp_path) == "sst5"
    raw = read_text_dataset("sst5", tmp_path)
    assert raw.classes == ["very negative", "negative", "neutral", "positive", "very positive"]
    assert raw.train[0] == ("It 's a lot of fun .", 3)
    assert raw.train[1] == ("( awful )", 0) and raw.train[2] == ("a / mess", 1)
    assert raw.val == [("superb", 4), ("bad", 0)] and raw.test == [("meh", 2)]
    ds = load_text_dataset("sst5", tmp_path)  # dev is the validation split, val_fraction unused
    assert len(ds.train) == 5 and ds.val.texts == ["superb", "bad"] and len(ds.test) == 1


@pytest.mark.parametrize("bad, reason", [
    ("(3 (2 a) (2 b)", "unbalanced tree"),
    ("(3 (2 a)))", "unbalanced tree"),
    ("(7 (2 a))", "root label '7'"),
    ("(3 (2 a)) (2 b)", "text after the end"),
    ("plain words", "expected a tree"),
])  # fmt: skip
def test_sst5_malformed_tree(tmp_path, bad, reason):
    _sst5(tmp_path, _SST5_TRAIN + bad + "\n")
    with pytest.raises(DatasetError, match=f"train.txt:6: {reason}"):
        read_text_dataset("sst5", tmp_path)


# -----------------------------------------------------------------------------
# IMDb and text folders


def _imdb(parent):
    root = parent / "aclImdb"
    for split in ("train", "test"):
        for cls, word in (("neg", "awful"), ("pos", "lovely")):
            for i in range(3):
                _write(root / split / cls / f"{i}_{7 if cls == 'pos' else 2}.txt", f"{split} {word} film {i}<br />end")
    _write(root / "train" / "unsup" / "0_0.txt", "unlabeled")
    _write(root / "imdb.vocab", "the\n")
    return root


def test_imdb_both_path_forms(tmp_path):
    root = _imdb(tmp_path)
    assert detect_text_dataset(tmp_path) == "imdb" and detect_text_dataset(root) == "imdb"
    for path in (tmp_path, root):
        raw = read_text_dataset("imdb", path)
        assert raw.classes == ["neg", "pos"] and len(raw.train) == 6 and len(raw.test) == 6  # unsup/ ignored
        assert raw.train[0] == ("train awful film 0<br />end", 0) and raw.test[5] == ("test lovely film 2<br />end", 1)
    ds = load_text_dataset(None, tmp_path, val_fraction=0.0)
    assert "<" not in ds.vocab.tokens and "br" not in ds.vocab.tokens  # <br /> is a space
    with pytest.raises(DatasetError, match="imdb: expected aclImdb/"):
        read_text_dataset("imdb", tmp_path / "aclImdb" / "train")


def _text_folder(root, counts, start=0):
    for cls, n in counts.items():
        for i in range(n):
            _write(root / cls / f"{start + i:03d}.txt", f"{cls} text number {start + i}")


def test_text_folder_without_split_folders(tmp_path):
    _text_folder(tmp_path, {"ham": 10, "spam": 5})
    (tmp_path / "ham" / "notes.md").write_text("not a text example")
    assert detect_text_dataset(tmp_path) == "text_folder"
    raw = read_text_dataset("text_folder", tmp_path)
    assert raw.classes == ["ham", "spam"] and len(raw.train) == 15 and raw.test is None and raw.val is None
    assert raw.train[0] == ("ham text number 0", 0) and raw.train[10] == ("spam text number 0", 1)
    ds = load_text_dataset(None, tmp_path, val_fraction=0.0, seed=1)  # no test split: 80/20, as for images
    assert len(ds.val) == 3 and torch.bincount(ds.val.labels).tolist() == [2, 1] and ds.test is None


def test_text_folder_with_split_folders(tmp_path):
    _text_folder(tmp_path / "train", {"a": 4, "b": 4})
    _text_folder(tmp_path / "valid", {"a": 1, "b": 1}, start=100)
    _text_folder(tmp_path / "test", {"b": 2}, start=200)
    assert detect_text_dataset(tmp_path) == "text_folder"
    ds = load_text_dataset("text_folder", tmp_path)
    assert len(ds.train) == 8 and ds.val.texts == ["a text number 100", "b text number 100"]
    assert ds.test.labels.tolist() == [1, 1]
    (tmp_path / "valid").rename(tmp_path / "spare")
    ds = load_text_dataset("text_folder", tmp_path, val_fraction=0.0)
    assert ds.test is None and ds.val.texts == ["b text number 200", "b text number 201"]  # test/ validates
    (tmp_path / "test").rename(tmp_path / "other")
    with pytest.raises(DatasetError, match="expected .*/val or .*/test next to .*/train"):
        load_text_dataset("text_folder", tmp_path, val_fraction=0.0)
    _text_folder(tmp_path / "val", {"zebra": 1})
    with pytest.raises(DatasetError, match=r"\['zebra'\] that are not in the train split"):
        load_text_dataset("text_folder", tmp_path)


def test_text_folder_errors_and_image_folder_is_not_text(tmp_path):
    with pytest.raises(DatasetError, match="text_folder: expected class folders"):
        read_text_dataset("text_folder", tmp_path)
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "0.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (tmp_path / "cat" / "readme.txt").write_text("a note among images")
    assert detect_text_dataset(tmp_path) is None
    (tmp_path / "cat" / "0.png").unlink()
    assert detect_text_dataset(tmp_path) == "text_folder"
    (tmp_path / "cat" / "readme.txt").unlink()
    assert detect_text_dataset(tmp_path) is None
    with pytest.raises(DatasetError, match=r"found no \.txt files"):
        read_text_dataset("text_folder", tmp_path)
    assert detect_text_dataset(tmp_path / "missing") is None
    # one text per file: a file that is not UTF-8 (an old corpus) is read as Windows-1252, with a warning
    (tmp_path / "cat" / "latin.txt").write_bytes(b"first line\nna\xefve \xa35\n")
    (tmp_path / "dog").mkdir()
    (tmp_path / "dog" / "d.txt").write_text("woof")
    raw = read_text_dataset("text_folder", tmp_path)
    assert "first line\nna\u00efve \u00a35\n" in [text for text, _ in raw.train]


# -----------------------------------------------------------------------------
# generic CSV / TSV / JSONL


def test_csv_folder_with_custom_columns_and_numeric_labels(tmp_path):
    _write(tmp_path / "train.csv", 'id,review,stars\n1,"Great, really",10\n2,meh,2\n3,"ok ""fine""",2\n4,  ,10\n')
    _write(tmp_path / "val.csv", "id,review,stars\n5,good,10\n")
    _write(tmp_path / "test.csv", "id,review,stars\n6,bad,2\n7,odd,3\n")
    assert detect_text_dataset(tmp_path) == "csv"
    with pytest.raises(DatasetError, match=r"train.csv:1: no column 'text' in the header \['id', 'review', 'stars'\]"):
        read_text_dataset("csv", tmp_path)
    with pytest.raises(DatasetError, match=r"test.csv:3: label '3' is not one of the training labels \['2', '10'\]"):
        read_text_dataset("csv", tmp_path, text_column="review", label_column="stars")
    _write(tmp_path / "test.csv", "id,review,stars\n6,bad,2\n")
    raw = read_text_dataset("csv", tmp_path, text_column="review", label_column="stars")
    assert raw.classes == ["2", "10"]  # numerically sorted
    assert raw.train == [("Great, really", 1), ("meh", 0), ('ok "fine"', 0), ("  ", 1)]
    assert raw.val == [("good", 1)] and raw.test == [("bad", 0)]
    ds = load_text_dataset(None, tmp_path, text_column="review", label_column="stars")
    assert ds.train.lengths.tolist()[3] == 0  # a blank text is kept, with length 0


def test_tsv_file_and_short_row(tmp_path):
    path = _write(tmp_path / "data.tsv", "label\ttext\nb\tsecond \"x\n" + "".join(f"a\tsample {i}\n" for i in range(9)))
    assert detect_text_dataset(path) == "tsv"
    raw = read_text_dataset("tsv", path)
    assert raw.classes == ["a", "b"] and raw.train[0] == ('second "x', 1) and raw.test is None
    _write(path, "label\ttext\nb\tfine\nonly-a-label\n")
    with pytest.raises(DatasetError, match="data.tsv:3: expected 2 fields like the header, got 1"):
        read_text_dataset("tsv", path)


@pytest.mark.parametrize("bad, reason", [
    ("{not json", "not JSON"),
    ('["a list"]', "expected a JSON object, got list"),
    ('{"body": "x"}', "no key 'tag'"),
    ('{"body": "x", "tag": null}', "'tag' must be a string or a number, got null"),
    ('{"body": 5, "tag": "a"}', "'body' must be a string"),
])  # fmt: skip
def test_jsonl_custom_keys_and_malformed_lines(tmp_path, bad, reason):
    lines = ['{"body": "first one", "tag": "sport"}', "", '{"body": "second", "tag": "art", "extra": 1}']
    _write(tmp_path / "train.jsonl", "\n".join(lines) + "\n")
    _write(tmp_path / "test.jsonl", '{"body": "third \u2028 line", "tag": "art"}\n')
    assert detect_text_dataset(tmp_path) == "jsonl"
    raw = read_text_dataset("jsonl", tmp_path, text_column="body", label_column="tag")
    assert raw.classes == ["art", "sport"] and raw.train == [("first one", 1), ("second", 0)]
    assert raw.test == [("third \u2028 line", 0)]  # a JSON string may hold U+2028; lines split at \n only
    _write(tmp_path / "train.jsonl", "\n".join([*lines, bad]) + "\n")
    with pytest.raises(DatasetError, match=f"train.jsonl:4: {reason}"):
        read_text_dataset("jsonl", tmp_path, text_column="body", label_column="tag")


def test_generic_missing_train_file(tmp_path):
    _write(tmp_path / "test.csv", "text,label\nx,1\n")
    with pytest.raises(DatasetError, match=f"csv: expected a .csv file, or a folder holding train.csv .* {tmp_path}"):
        read_text_dataset("csv", tmp_path)


# -----------------------------------------------------------------------------
# load_text_dataset: validation split, vocabulary, reuse of a saved model's vocabulary and classes


def _corpus(root, n=20):
    words = ["alpha", "beta", "gamma", "delta"]
    rows = [f"{words[i % 4]} {words[(i * 3) % 4]} item{i},{'even' if i % 2 == 0 else 'odd'}" for i in range(n)]
    _write(root / "train.csv", "text,label\n" + "\n".join(rows) + "\n")
    _write(root / "test.csv", "text,label\nalpha onlyintest,even\nbeta item3,odd\n")


def test_validation_split_is_stratified_and_seeded(tmp_path, caplog):
    _corpus(tmp_path)
    with caplog.at_level(logging.INFO, logger="compact_transformers.data.text"):
        ds = load_text_dataset("csv", tmp_path, val_fraction=0.2, seed=5, seq_len=8)
    assert "csv: 16 train, 4 val, 2 test examples" in caplog.text
    assert isinstance(ds, TextDataset) and ds.classes == ["even", "odd"] and ds.seq_len == 8
    assert torch.bincount(ds.val.labels).tolist() == [2, 2]
    assert ds.train.ids.shape == (16, 8) and ds.test.ids.shape == (2, 8)
    again = load_text_dataset("csv", tmp_path, val_fraction=0.2, seed=5, seq_len=8)
    assert ds.val.texts == again.val.texts and torch.equal(ds.val.ids, again.val.ids)
    others = [load_text_dataset("csv", tmp_path, val_fraction=0.2, seed=s).val.texts for s in range(6, 10)]
    assert any(texts != ds.val.texts for texts in others)
    assert not set(ds.val.texts) & set(ds.train.texts)
    # the vocabulary comes from the training split only: words of val and test are UNK
    val_only = {w for t in ds.val.texts for w in tokenize(t)} - {w for t in ds.train.texts for w in tokenize(t)}
    assert val_only and not val_only & set(ds.vocab.tokens)
    assert "onlyintest" not in ds.vocab.tokens and ds.test.ids[0, 1] == UNK and ds.test.ids[0, 0] != UNK
    for split in (ds.train, ds.val, ds.test):
        assert torch.equal(split.mask, split.ids != PAD) and split.labels.dtype == torch.int64


def test_val_fraction_zero_uses_test_and_bad_arguments(tmp_path):
    _corpus(tmp_path)
    ds = load_text_dataset("csv", tmp_path, val_fraction=0.0)
    assert len(ds.train) == 20 and ds.val.texts == ["alpha onlyintest", "beta item3"] and ds.test is None
    with pytest.raises(ConfigError, match="val_fraction"):
        load_text_dataset("csv", tmp_path, val_fraction=1.0)
    with pytest.raises(ConfigError, match="seq_len"):
        load_text_dataset("csv", tmp_path, seq_len=0)
    with pytest.raises(DatasetError, match="unknown text dataset 'yelp'") as err:
        load_text_dataset("yelp", tmp_path)
    assert all(name in str(err.value) for name in TEXT_DATASET_NAMES)
    with pytest.raises(DatasetError, match="does not exist"):
        load_text_dataset(None, tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="cannot tell which text dataset"):
        load_text_dataset(None, tmp_path / "empty")


def test_min_freq_and_max_vocab(tmp_path):
    _corpus(tmp_path)
    ds = load_text_dataset("csv", tmp_path, val_fraction=0.0, min_freq=2)
    assert ds.vocab.tokens[2:] == ["alpha", "beta", "delta", "gamma"]  # 10 each: ties a-z
    assert len(load_text_dataset("csv", tmp_path, val_fraction=0.0, max_vocab=5).vocab) == 5


def test_saved_vocab_and_classes_are_reused(tmp_path):
    _corpus(tmp_path / "a")
    model = load_text_dataset("csv", tmp_path / "a", val_fraction=0.0, seq_len=6)
    saved_vocab, saved_classes = json.loads(json.dumps(model.vocab.to_dict())), list(reversed(model.classes))
    # new data: other words, another label order, a subset of the classes
    _write(tmp_path / "b" / "data.csv", "label,text\nodd,beta delta item1\nodd,brandnew alpha\n")
    ds = load_text_dataset("csv", tmp_path / "b" / "data.csv", val_fraction=0.0, seq_len=6,
                           vocab=Vocabulary.from_dict(saved_vocab), classes=saved_classes)  # fmt: skip
    assert ds.vocab.tokens == model.vocab.tokens and ds.classes == ["odd", "even"]
    texts = ds.train.texts + ds.val.texts
    labels = torch.cat([ds.train.labels, ds.val.labels])
    ids = torch.cat([ds.train.ids, ds.val.ids])
    assert labels.tolist() == [0, 0]  # "odd" is class 0 of the saved list
    row = texts.index("beta delta item1")
    assert torch.equal(ids[row], encode_texts(["beta delta item1"], model.vocab, 6)[0][0])
    assert model.train.ids[model.train.texts.index("beta delta item1")].tolist() == ids[row].tolist()
    assert ids[texts.index("brandnew alpha")][0] == UNK
    with pytest.raises(DatasetError, match=r"labels \['odd'\] that are not among the given classes \['even'\]"):
        load_text_dataset("csv", tmp_path / "b" / "data.csv", classes=["even"])


def test_text_module_imports_without_optional_packages():
    code = (
        "import sys; import compact_transformers.data.text as t; "
        "bad = [m for m in ('PIL', 'scipy', 'sklearn', 'pandas') if m in sys.modules]; assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
