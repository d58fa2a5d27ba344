"""Text data and text models: malformed rows (named `file:line`), empty files and texts, labels the training
split lacks, and `cct predict` / `cct eval` of a text model given nothing or the wrong thing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

TRAIN = ["--epochs", "1", "--quiet", "--device", "cpu"]
HEADER = "text,label\n"
GOOD_ROWS = "".join(f"the {w} number {i} was on,{label}\n" for i in range(12)
                    for w, label in [(("match", "bank")[i % 2], ("sport", "money")[i % 2])])  # fmt: skip


def _lines_of(text: str) -> int:
    return text.count("\n")


# train.csv content -> (line of the problem or None, words of the error)
BAD_CSV: dict[str, tuple[str, int | None, tuple[str, ...]]] = {
    "a row with too few fields": (HEADER + GOOD_ROWS + "just a text without label\n", None, ("2 fields", "got 1")),
    "an unclosed quote": (HEADER + GOOD_ROWS + '"an open quote,sport\n', None, ("2 fields", "got 1")),
    "an empty label": (HEADER + GOOD_ROWS + "a text,\n", None, ("empty label",)),
    "a label of spaces": (HEADER + GOOD_ROWS + "a text,   \n", None, ("empty label",)),
    "not UTF-8": (HEADER + GOOD_ROWS + "caf\xe9 au lait,money\n", None, ("UTF-8",)),
    "no text column": ("body,label\n" + GOOD_ROWS, 1, ("'text'", "--text-column")),
    "no label column": ("text,category\n" + GOOD_ROWS, 1, ("'label'", "--label-column")),
}


@pytest.mark.parametrize("case", list(BAD_CSV))
def test_malformed_csv(case: str, tmp_path: Path, cct, check) -> None:
    content, line, needles = BAD_CSV[case]
    line = line or _lines_of(content)  # the last row, unless said
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.csv").write_bytes(content.encode("latin-1"))
    outcome = cct("train", "--data", data, *TRAIN, "--output", tmp_path / "runs")
    outcome.error_line("train", f"{data / 'train.csv'}:{line}", *needles)
    check.no_run_made(tmp_path / "runs")


BAD_JSONL: dict[str, tuple[str, tuple[str, ...]]] = {
    "a line that is not JSON": ('{"text": "a", "label": "x"\n', ("not JSON",)),
    "an array": ('["a", "x"]\n', ("JSON object", "list")),
    "a missing key": ('{"body": "a", "label": "x"}\n', ("'text'",)),
    "a list as label": ('{"text": "a", "label": ["x"]}\n', ("'label'", "string or a number")),
    "a number as text": ('{"text": 5, "label": "x"}\n', ("'text'", "string")),
}


@pytest.mark.parametrize("case", list(BAD_JSONL))
def test_malformed_jsonl(case: str, tmp_path: Path, cct, check) -> None:
    bad, needles = BAD_JSONL[case]
    good = "".join(json.dumps({"text": f"text {i}", "label": "ab"[i % 2]}) + "\n" for i in range(10))
    path = tmp_path / "train.jsonl"
    path.write_text(good + bad)
    outcome = cct("train", "--data", path, *TRAIN, "--output", tmp_path / "runs")
    outcome.error_line("train", f"{path}:11", *needles)
    check.no_run_made(tmp_path / "runs")


def test_tsv_row_with_too_few_fields(tmp_path: Path, cct, check) -> None:
    path = tmp_path / "train.tsv"
    path.write_text("text\tlabel\n" + "".join(f"text {i}\t{'ab'[i % 2]}\n" for i in range(10)) + "no tab here\n")
    outcome = cct("train", "--data", path, *TRAIN, "--output", tmp_path / "runs")
    outcome.error_line("train", f"{path}:12", "fields")
    check.no_run_made(tmp_path / "runs")


@pytest.mark.parametrize("split", ["test", "val"])
def test_unknown_label_in_a_validation_file(split: str, tmp_path: Path, cct, check) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.csv").write_text(HEADER + GOOD_ROWS)
    (data / f"{split}.csv").write_text(HEADER + "a match,sport\nsunny all day,weather\n")
    outcome = cct("train", "--data", data, *TRAIN, "--output", tmp_path / "runs")
    outcome.error_line("train", f"{data / f'{split}.csv'}:3", "'weather'", "money", "sport")
    check.no_run_made(tmp_path / "runs")


DEGENERATE: dict[str, tuple[dict[str, str], tuple[str, ...]]] = {  # files -> words of the error
    "an empty train.csv": ({"train.csv": ""}, ("train.csv", "empty file")),
    "a header only": ({"train.csv": HEADER}, ("no training examples",)),
    "one label only": ({"train.csv": HEADER + "".join(f"text {i},sport\n" for i in range(10))},
                       ("two classes", "sport")),
    "one text per label": ({"train.csv": HEADER + "a match,sport\na bank,money\n"}, ("validation", "sport 1")),
    "a folder of empty class folders": ({"a/": "", "b/": ""}, ("no readable images",)),
    "class folders only in val/": ({"val/a/1.txt": "a text", "val/b/1.txt": "another"}, ("no train/",)),
}


@pytest.mark.parametrize("case", list(DEGENERATE))
def test_degenerate_text_data(case: str, tmp_path: Path, cct, check) -> None:
    files, needles = DEGENERATE[case]
    data = tmp_path / "data"
    data.mkdir()
    for name, content in files.items():
        (data / name).parent.mkdir(parents=True, exist_ok=True)
        if name.endswith("/"):
            (data / name).mkdir(exist_ok=True)
        else:
            (data / name).write_text(content)
    outcome = cct("train", "--data", data, *TRAIN, "--output", tmp_path / "runs")
    outcome.error_line("train", str(data), *needles)
    check.no_run_made(tmp_path / "runs")


def test_empty_text_files_in_a_text_folder_train(tmp_path: Path, cct) -> None:
    """An empty .txt file is a text of no words: it trains and validates as one, never as NaN."""
    data = tmp_path / "data"
    for label in ("sport", "money"):
        (data / label).mkdir(parents=True)
        for i in range(6):
            (data / label / f"{i}.txt").write_text("" if i % 3 == 0 else f"a {label} story number {i}")
    outcome = cct("train", "--data", data, *TRAIN, "--output", tmp_path / "runs", "--name", "run")
    outcome.succeeded()
    final = json.loads((tmp_path / "runs" / "run" / "final.json").read_text())
    assert final["val"]["loss"] is not None and final["val"]["count"] == 2


# ------------------------------------------------------------------------------------- text models


@pytest.mark.parametrize("argv, needles", [
    ([], ("give texts",)),
    (["--file", "EMPTY"], ("give texts",)),
    (["--file", "MISSING"], ("MISSING",)),
    (["--file", "BINARY"], ("BINARY", "UTF-8")),
    (["--file", "FOLDER"], ("FOLDER",)),
], ids=["nothing", "an empty file", "a missing file", "a binary file", "a folder"])  # fmt: skip
def test_predict_a_text_model_without_texts(argv: list[str], needles: tuple[str, ...], text_run: Path,
                                            tmp_path: Path, cct) -> None:  # fmt: skip
    paths = {"EMPTY": tmp_path / "empty.txt", "MISSING": tmp_path / "missing.txt", "BINARY": tmp_path / "bin.txt",
             "FOLDER": tmp_path}  # fmt: skip
    paths["EMPTY"].write_text("")
    paths["BINARY"].write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\x00")
    outcome = cct("predict", text_run, *(str(paths.get(a, a)) for a in argv))
    outcome.error_line("predict", *(str(paths.get(n, n)) for n in needles))
    assert outcome.out == ""


def test_predict_empty_and_symbol_only_texts(text_run: Path, cct) -> None:
    """Texts with no known word, or no word at all, get a proper distribution, not NaN."""
    outcome = cct("predict", text_run, "", "   ", "!!!", "zzzz qqqq", "--json", "--top-k", "2")
    records = [json.loads(line) for line in outcome.succeeded().splitlines()]
    assert len(records) == 4
    for record in records:
        probabilities = [p["probability"] for p in record["predictions"]]
        assert all(0 <= p <= 1 for p in probabilities) and sum(probabilities) == pytest.approx(1, abs=1e-4)


def test_predict_a_text_model_with_empty_stdin(text_run: Path, process) -> None:
    outcome = process("predict", text_run, "-", stdin="")
    outcome.error_line("predict", "give texts")


def test_predict_images_with_a_text_model_reads_them_as_texts(text_run: Path, tmp_path: Path, cct, make) -> None:
    """A text model classifies its arguments as texts, even file names: one line each, nothing read."""
    [image] = make.images(tmp_path, 1)
    outcome = cct("predict", text_run, str(image), "--json")
    [line] = outcome.succeeded().splitlines()
    assert json.loads(line)["text"] == str(image)


def test_eval_a_text_run_on_data_with_other_labels(text_run: Path, tmp_path: Path, cct) -> None:
    data = tmp_path / "other"
    data.mkdir()
    (data / "train.csv").write_text(HEADER + "".join(f"text {i},{'xy'[i % 2]}\n" for i in range(10)))
    outcome = cct("eval", text_run, "--data", data, "--output", tmp_path / "eval")
    outcome.error_line("eval", "'x'", "money")
    assert not (tmp_path / "eval").exists()


def test_eval_a_text_run_whose_data_moved(text_run: Path, tmp_path: Path, cct) -> None:
    import shutil

    import yaml

    run = tmp_path / "run"
    shutil.copytree(text_run, run)
    model_config = json.loads((run / "model" / "config.json").read_text())
    model_config["extra"]["data"] = str(tmp_path / "moved")
    (run / "model" / "config.json").write_text(json.dumps(model_config))
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["data"] = str(tmp_path / "moved")
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    outcome = cct("eval", run, "--output", tmp_path / "eval")
    outcome.error_line("eval", str(tmp_path / "moved"), "exist")


@pytest.mark.parametrize("content", ["", "not vectors at all\n", "the 0.1 0.2\nof 0.3\n"],
                         ids=["empty", "words only", "ragged rows"])  # fmt: skip
def test_broken_word_vectors(content: str, text_data: Path, tmp_path: Path, cct, check) -> None:
    vectors = tmp_path / "glove.txt"
    vectors.write_text(content)
    outcome = cct("train", "--data", text_data, *TRAIN, "--embeddings", vectors, "--output", tmp_path / "runs")
    outcome.error_line("train", str(vectors))
    check.no_run_made(tmp_path / "runs")


def test_missing_word_vectors(text_data: Path, tmp_path: Path, cct, check) -> None:
    outcome = cct("train", "--data", text_data, *TRAIN, "--embeddings", tmp_path / "glove.txt",
                  "--output", tmp_path / "runs")  # fmt: skip
    outcome.error_line("train", str(tmp_path / "glove.txt"))
    check.no_run_made(tmp_path / "runs")
