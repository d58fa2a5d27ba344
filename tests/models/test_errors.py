"""Bad input gives one clear error that says what was wrong and what was expected."""

from __future__ import annotations

import pathlib
import pickle

import pytest
import torch

from compact_transformers.models import CheckpointError, create_model, load_model, read_state_dict, save_model


def _one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message, message
    return message


def test_wrong_channel_count_names_both() -> None:
    model = create_model("cct_2_3x2_32")
    with pytest.raises(ValueError) as error:
        model(torch.randn(1, 1, 32, 32))
    message = _one_line(error)
    assert "1 channels" in message and "expects 3" in message and "in_chans=1" in message


def test_image_too_small_gives_the_minimum() -> None:
    model = create_model("cct_2_3x2_32", positional_embedding="none")
    minimum = model.tokenizer.min_input_size()
    assert model.tokenizer.grid_size(minimum, minimum) >= (1, 1)
    assert min(model.tokenizer.grid_size(minimum - 1, minimum - 1)) < 1
    model(torch.randn(1, 3, minimum, minimum))  # the minimum itself works
    with pytest.raises(ValueError) as error:
        model(torch.randn(1, 3, minimum - 1, minimum - 1))
    assert f"at least {minimum}x{minimum}" in _one_line(error)
    vit = create_model("vit_2_8_32", positional_embedding="none")
    with pytest.raises(ValueError, match="at least 8x8"):
        vit(torch.randn(1, 3, 4, 4))
    with pytest.raises(ValueError, match="divisible by patch_size 8"):
        create_model("vit_2_8_32", img_size=36)


def test_wrong_tensor_rank() -> None:
    with pytest.raises(ValueError, match=r"expected images of shape \(B, C, H, W\), got shape \(3, 32, 32\)"):
        create_model("cvt_2_4_32")(torch.randn(3, 32, 32))


def test_unknown_model_name_suggests_close_names() -> None:
    with pytest.raises(ValueError) as error:
        create_model("cct_7_3x1_23")
    message = _one_line(error)
    assert "unknown model 'cct_7_3x1_23'" in message and "cct_7_3x1_32" in message
    with pytest.raises(ValueError, match="list_models"):
        create_model("resnet50")


def test_unknown_override_option() -> None:
    with pytest.raises(ValueError) as error:
        create_model("cct_2_3x2_32", num_clases=5)
    message = _one_line(error)
    assert "num_clases" in message and "num_classes" in message


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_corrupt_weight_files(suffix: str, damage: str, tmp_path) -> None:
    model = create_model("cct_2_3x2_32")
    good = tmp_path / f"good{suffix}"
    if suffix == ".pth":
        torch.save(model.state_dict(), good)
    else:
        save_model(model, good)
    data = good.read_bytes()
    bad = tmp_path / f"bad{suffix}"
    if damage == "truncated":
        bad.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        bad.write_bytes(bytes(range(256)) * 8)
    else:
        bad.write_bytes(b"")
    with pytest.raises(CheckpointError) as error:
        create_model("cct_2_3x2_32", pretrained=bad)
    message = _one_line(error)
    assert str(bad) in message and "cannot read" in message
    assert "weights_only` set to `False`" not in message  # never relay torch's advice to unpickle unsafely
    if suffix == ".safetensors":
        with pytest.raises(CheckpointError):
            load_model(bad)


def test_missing_weight_file(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="weight file not found"):
        create_model("cct_2_3x2_32", pretrained=tmp_path / "nope.pth")
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        load_model(tmp_path)


def test_mismatched_state_dict_names_keys_and_shapes(tmp_path) -> None:
    state = create_model("cct_2_3x2_32").state_dict()
    state["classifier.blocks.0.linear1.weight"] = torch.zeros(7, 128)
    del state["classifier.norm.bias"]
    state["classifier.extra.weight"] = torch.zeros(3)
    torch.save(state, tmp_path / "odd.pth")
    with pytest.raises(CheckpointError) as error:
        create_model("cct_2_3x2_32", pretrained=tmp_path / "odd.pth")
    message = _one_line(error)
    assert "missing keys [classifier.norm.bias]" in message
    assert "unexpected keys [classifier.extra.weight]" in message
    assert "classifier.blocks.0.linear1.weight: checkpoint (7, 128) vs model (128, 128)" in message
    # a checkpoint of another architecture
    save_model(create_model("cvt_2_4_32"), tmp_path / "cvt.safetensors")
    with pytest.raises(CheckpointError, match="does not match the model"):
        create_model("cct_2_3x2_32", pretrained=tmp_path / "cvt.safetensors")


def test_pretrained_true_without_released_weights() -> None:
    with pytest.raises(CheckpointError) as error:
        create_model("cvt_7_4_32", pretrained=True)
    message = _one_line(error)
    assert "cvt_7_4_32 has no released weights" in message and "cct_7_3x1_32" in message


def test_unreachable_url_says_where_to_put_the_file(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("CCT_CACHE", str(tmp_path / "cache"))
    with pytest.raises(CheckpointError) as error:
        create_model("cct_2_3x2_32", pretrained="http://127.0.0.1:9/x.pth")
    message = _one_line(error)
    assert "could not download http://127.0.0.1:9/x.pth" in message
    assert str(tmp_path / "cache" / "x.pth") in message
    assert not (tmp_path / "cache" / "x.pth").exists()


def test_released_preset_uses_a_file_placed_in_the_cache(tmp_path, monkeypatch) -> None:
    """The offline workflow the message above describes: put the file in the cache, then pretrained=True."""
    monkeypatch.setenv("CCT_CACHE", str(tmp_path))
    source = create_model("cct_7_3x1_32")
    torch.save(source.state_dict(), tmp_path / "cct_7_3x1_32_cifar10_300epochs.pth")
    model = create_model("cct_7_3x1_32", pretrained=True)
    assert torch.equal(model.classifier.fc.weight, source.classifier.fc.weight)


class _Payload:
    """Unpickling this object would create a marker file."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


def test_malicious_pickle_is_refused_and_never_executed(tmp_path) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    state = create_model("cct_2_3x2_32").state_dict()
    torch.save({**state, "payload": _Payload(marker)}, evil)
    # sanity: the payload does run when unpickled unsafely (in a copy, to keep the real marker path clean)
    probe = tmp_path / "probe"
    pickle.loads(pickle.dumps(_Payload(probe)))
    assert probe.exists()

    with pytest.raises(CheckpointError) as error:
        create_model("cct_2_3x2_32", pretrained=evil)
    message = _one_line(error)
    assert "refusing to load" in message and "nothing was executed" in message
    with pytest.raises(CheckpointError):
        read_state_dict(evil)
    raw = tmp_path / "raw.pth"
    raw.write_bytes(pickle.dumps({"w": _Payload(marker)}, protocol=2))  # a plain pickle, not torch.save
    with pytest.raises(CheckpointError):
        read_state_dict(raw)
    assert not marker.exists()


def test_non_tensor_checkpoint(tmp_path) -> None:
    torch.save({"weights": [1, 2, 3]}, tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match="does not hold a state dict of tensors"):
        read_state_dict(tmp_path / "list.pth")
