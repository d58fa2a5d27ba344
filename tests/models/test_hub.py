"""The Hugging Face Hub layout: save_pretrained / from_pretrained, model cards, hf-hub: ids, push, conversion.

Offline: a Hub repository is simulated by pointing ``huggingface_hub.snapshot_download`` at a local directory,
and the real client is exercised for its offline failure.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from compact_transformers import CompactTransformer, TextCompactTransformer, create_model, load_model
from compact_transformers.cli import main
from compact_transformers.errors import CheckpointError, HubError
from compact_transformers.models import hub

huggingface_hub = pytest.importorskip("huggingface_hub", reason="needs the [hub] extra")

TINY_RUN = ["--samples-per-class", "5", "--epochs", "1", "--batch-size", "16", "--quiet", "--device", "cpu"]


def vision_model() -> CompactTransformer:
    torch.manual_seed(0)
    return create_model("cct_2_3x2_32", num_classes=5, img_size=(16, 16),
                        extra={"classes": ["ant", "bee", "cat", "dog", "eel"], "dataset": "toy"}).eval()


def text_model() -> TextCompactTransformer:
    torch.manual_seed(0)
    vocab = {"tokens": ["<unk>", "<pad>", "good", "bad"], "tokenizer": "words-v1"}
    return create_model("text_cct_2_1x1", num_classes=2, vocab_size=4, word_dim=8, seq_len=6,
                        extra={"classes": ["neg", "pos"], "vocab": vocab}).eval()


def error_line(capsys: pytest.CaptureFixture) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_save_pretrained_round_trip_gives_identical_logits(tmp_path: Path) -> None:
    model = vision_model()
    model.save_pretrained(tmp_path / "vision")
    assert sorted(p.name for p in (tmp_path / "vision").iterdir()) == ["README.md", "config.json", "model.safetensors"]
    loaded = CompactTransformer.from_pretrained(tmp_path / "vision").eval()
    images = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(model(images), loaded(images))

    text = text_model()
    text.save_pretrained(tmp_path / "text")
    loaded_text = TextCompactTransformer.from_pretrained(tmp_path / "text").eval()
    ids = torch.tensor([[2, 3, 2, 1, 1, 1], [3, 3, 3, 3, 2, 1]])
    with torch.no_grad():
        assert torch.equal(text(ids), loaded_text(ids))
    assert loaded_text.config.extra["vocab"] == text.config.extra["vocab"]


def test_from_pretrained_refuses_the_other_model_class(tmp_path: Path) -> None:
    text_model().save_pretrained(tmp_path / "text")
    with pytest.raises(CheckpointError, match="TextCompactTransformer, not a CompactTransformer"):
        CompactTransformer.from_pretrained(tmp_path / "text")


def test_model_card_metadata_and_summary(tmp_path: Path) -> None:
    info = hub.CardInfo(dataset="toy", metrics={"val": 91.25, "test": 90.5}, recipe={"epochs": 30, "lr": 0.001})
    vision_model().save_pretrained(tmp_path / "m", card=info)
    card = huggingface_hub.ModelCard.load(tmp_path / "m" / "README.md")
    data = card.data.to_dict()
    assert data["library_name"] == "compact-transformers"
    assert data["license"] == "apache-2.0"
    assert data["pipeline_tag"] == "image-classification"
    assert "arxiv:2104.05704" in data["tags"]
    assert data["datasets"] == ["toy"]
    results = {r.dataset_split: r.metric_value for r in card.data.eval_results}
    assert results == {"val": 91.25, "test": 90.5}
    assert "# CCT-2/3x2" in card.text
    assert "| test | 90.50 |" in card.text and "epochs: 30" in card.text
    assert "classes (5): ant, bee, cat, dog, eel" in card.text

    text_model().save_pretrained(tmp_path / "t")
    text_card = huggingface_hub.ModelCard.load(tmp_path / "t" / "README.md")
    assert text_card.data.pipeline_tag == "text-classification"
    assert "# Text CCT-2/2x1" in text_card.text or "# Text CCT-2/1x1" in text_card.text
    assert "without the word embedding" in text_card.text


def test_export_hub_from_a_run_carries_its_results_and_recipe(tmp_path: Path) -> None:
    assert main(["train", *TINY_RUN, "--output", str(tmp_path), "--name", "run"]) == 0
    run = tmp_path / "run"
    assert main(["export", str(run), str(tmp_path / "hub"), "--format", "hub"]) == 0
    final = json.loads((run / "final.json").read_text())
    card = huggingface_hub.ModelCard.load(tmp_path / "hub" / "README.md")
    results = {r.dataset_split: r.metric_value for r in card.data.eval_results}
    assert results == {split: final[split]["top1"] for split in ("val", "test") if split in final}
    assert "val" in results
    assert "batch_size: 16" in card.text and "data:" not in card.text  # no local paths in a public card
    trained = load_model(run / "model").eval()
    images = torch.randn(2, trained.config.in_chans, *trained.config.img_size)
    with torch.no_grad():
        assert torch.equal(load_model(tmp_path / "hub").eval()(images), trained(images))


@pytest.fixture()
def fake_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """``hf-hub:org/name`` resolves to a local directory; the calls are recorded."""
    repo = tmp_path / "hub-repo"
    vision_model().save_pretrained(repo)
    calls: dict = {}

    def snapshot_download(repo_id: str, revision: str | None = None, allow_patterns: list[str] | None = None):
        calls.update(repo_id=repo_id, revision=revision, allow_patterns=allow_patterns)
        return str(repo)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    return calls


def test_hf_hub_ids_load_everywhere_and_download_only_config_weights_and_card(fake_hub: dict, tmp_path: Path,
                                                                              capsys: pytest.CaptureFixture) -> None:
    expected = vision_model()
    images = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        reference = expected(images)
        assert torch.equal(load_model("hf-hub:someone/cct-toy@v1").eval()(images), reference)
    assert fake_hub == {"repo_id": "someone/cct-toy", "revision": "v1",
                        "allow_patterns": ["config.json", "model.safetensors", "README.md"]}
    fresh = create_model("cct_2_3x2_32", num_classes=5, img_size=(16, 16), pretrained="hf-hub:someone/cct-toy")
    with torch.no_grad():
        assert torch.equal(fresh.eval()(images), reference)

    from PIL import Image

    Image.new("RGB", (16, 16), (200, 30, 30)).save(tmp_path / "red.png")
    capsys.readouterr()
    assert main(["predict", "hf-hub:someone/cct-toy", str(tmp_path / "red.png"), "--json", "--device", "cpu"]) == 0
    line = json.loads(capsys.readouterr().out.strip())
    assert line["predictions"][0]["label"] in expected.config.extra["classes"]


def test_teacher_from_the_hub(fake_hub: dict) -> None:
    from compact_transformers.training.build import load_teacher

    teacher = load_teacher("hf-hub:someone/cct-toy", torch.device("cpu"))
    assert fake_hub["repo_id"] == "someone/cct-toy"
    assert not any(p.requires_grad for p in teacher.parameters())


@pytest.mark.parametrize("bad", ["hf-hub:nameonly", "hf-hub:a/b/c", "hf-hub:/x"])
def test_malformed_hub_ids_are_refused(bad: str) -> None:
    with pytest.raises(CheckpointError, match="not a Hub model id"):
        load_model(bad)


def test_offline_hub_download_is_one_clear_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(CheckpointError, match="not in the local cache"):
        load_model("hf-hub:nobody/not-here")
    assert main(["predict", "hf-hub:nobody/not-here", "x.png"]) == 2
    line = error_line(capsys)
    assert "nobody/not-here" in line and "pass the directory instead" in line


def test_push_uploads_the_hub_layout(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    model_dir = tmp_path / "model"
    vision_model().save_pretrained(model_dir)
    uploaded: dict = {}

    class FakeApi:
        def __init__(self, token: str | None = None) -> None:
            uploaded["token"] = token

        def create_repo(self, repo_id: str, private: bool = False, exist_ok: bool = False) -> str:
            uploaded.update(repo_id=repo_id, private=private, exist_ok=exist_ok)
            return f"https://huggingface.co/{repo_id}"

        def upload_folder(self, folder_path: str, repo_id: str, commit_message: str,
                          allow_patterns: list[str]) -> None:
            uploaded["files"] = sorted(p.name for p in Path(folder_path).iterdir() if p.name in allow_patterns)
            uploaded["card"] = (Path(folder_path) / "README.md").read_text()

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    assert main(["hub", "push", str(model_dir), "me/cct-toy", "--private", "--token", "t0k"]) == 0
    assert uploaded["repo_id"] == "me/cct-toy" and uploaded["private"] and uploaded["token"] == "t0k"
    assert uploaded["files"] == ["README.md", "config.json", "model.safetensors"]
    assert "library_name: compact-transformers" in uploaded["card"]


def test_push_offline_is_one_clear_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    vision_model().save_pretrained(tmp_path / "model")
    with pytest.raises(HubError, match="cannot push to me/x"):
        hub.push_to_hub(tmp_path / "model", "me/x")
    assert main(["hub", "push", str(tmp_path / "model"), "me/x"]) == 2
    assert "cct hub: error: cannot push to me/x on the Hugging Face Hub" in error_line(capsys)


def test_push_refuses_a_directory_without_the_hub_files(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="lacks config.json, model.safetensors, README.md"):
        hub.push_to_hub(tmp_path / "empty", "me/x")


def test_authors_checkpoint_converts_to_the_hub_layout_with_identical_logits(tmp_path: Path, ref) -> None:
    # the authors' key layout with random (perturbed) weights and a 7-class head
    state = ref.state_dict("cct", embed_dim=128, num_layers=2, mlp_ratio=1.0, num_classes=7, num_tokens=64,
                           kernel_size=3, n_conv_layers=2, positional="learnable", seed=5)
    torch.save(state, tmp_path / "authors.pth")
    assert main(["convert", str(tmp_path / "authors.pth"), "--model", "cct_2_3x2_32",
                 "--output", str(tmp_path / "converted")]) == 0
    assert (tmp_path / "converted" / "README.md").exists()
    converted = load_model(tmp_path / "converted").eval()
    assert converted.config.num_classes == 7
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected = ref.forward(state, images, family="cct", num_heads=2, kernel_size=3, patch_size=4)
        torch.testing.assert_close(converted(images), expected, atol=1e-5, rtol=0)
        direct = create_model("cct_2_3x2_32", num_classes=7, pretrained=tmp_path / "authors.pth").eval()
        assert torch.equal(converted(images), direct(images))


def test_convert_without_a_head_needs_the_class_count(tmp_path: Path, ref, capsys: pytest.CaptureFixture) -> None:
    state = ref.state_dict("cct", embed_dim=128, num_layers=2, mlp_ratio=1.0, num_classes=7, num_tokens=64,
                           kernel_size=3, n_conv_layers=2, positional="learnable", seed=5)
    del state["classifier.fc.weight"], state["classifier.fc.bias"]
    torch.save(state, tmp_path / "headless.pth")
    assert main(["convert", str(tmp_path / "headless.pth"), "--model", "cct_2_3x2_32",
                 "--output", str(tmp_path / "out")]) == 2
    assert "no classifier head" in error_line(capsys)
    assert not (tmp_path / "out").exists()
