"""Checkpoints: the native format (safetensors + JSON config), the authors' ``.pth`` files, safe loading.

Native format: a directory with ``model.safetensors`` and ``config.json``; the config is also stored in the
safetensors metadata, so the ``.safetensors`` file alone rebuilds its model. ``.pth`` files are only read with
``torch.load(weights_only=True)``: a pickle that tries to run code is refused, never executed.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import os
import pickle
import urllib.request
import warnings
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import CheckpointError, ConfigError
from ..faults import kill_point
from ..fileio import atomic_write
from .hub import HUB_PREFIX, hub_snapshot
from .layers import resize_positional_embedding, sinusoidal_table
from .presets import build_model, get_preset
from .text import TextConfig
from .vision import CompactTransformer, VisionConfig

logger = logging.getLogger(__name__)

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
_CONFIG_METADATA_KEY = "compact_transformers.config"
PE_KEY = "classifier.positional_emb"
HEAD_KEYS = ("classifier.fc.weight", "classifier.fc.bias")


def cache_dir() -> Path:
    """Where downloaded weights are kept: ``$CCT_CACHE`` or ``~/.cache/compact_transformers``."""
    return Path(os.environ.get("CCT_CACHE", Path.home() / ".cache" / "compact_transformers"))


# ---------------------------------------------------------------------------------------------- saving


# Kinds of model defined by an integration -> its module, whose ``config_from_dict(data)`` reads such a config
# and whose config's ``build()`` makes the model. Imported only when such a model is loaded: models/ never
# imports integrations at module level.
EXTERNAL_KINDS = {"timm": "compact_transformers.integrations.timm"}


def model_config(model: nn.Module) -> dict:
    config = model.config
    kind = getattr(config, "kind", "text" if isinstance(config, TextConfig) else "vision")
    return {"kind": kind, **config.to_dict()}


def config_from_dict(data: dict) -> VisionConfig | TextConfig:
    """The config object of a saved ``model_config`` dict: its ``kind`` picks the class (an integration's
    kind, the integration's config class)."""
    data = dict(data)
    kind = data.pop("kind", "vision")
    if kind in EXTERNAL_KINDS:
        return importlib.import_module(EXTERNAL_KINDS[kind]).config_from_dict(data)
    if kind not in ("vision", "text"):
        raise ConfigError(f"unknown model kind {kind!r}; expected vision, text or {', '.join(EXTERNAL_KINDS)}")
    return TextConfig.from_dict(data) if kind == "text" else VisionConfig.from_dict(data)


def save_model(model: nn.Module, path: str | os.PathLike) -> Path:
    """Save ``model`` to a directory (``model.safetensors`` + ``config.json``) or to a ``.safetensors`` file."""
    path = Path(path)
    config = model_config(model)
    tensors = {name: tensor.detach().contiguous().cpu() for name, tensor in model.state_dict().items()}
    metadata = {_CONFIG_METADATA_KEY: json.dumps(config)}
    weights_path = path if path.suffix == ".safetensors" else path / WEIGHTS_FILE
    atomic_write(weights_path, lambda tmp: save_file(tensors, tmp, metadata=metadata))
    kill_point(f"weights-written-{path.name}")
    if path.suffix != ".safetensors":
        atomic_write(path / CONFIG_FILE, lambda tmp: Path(tmp).write_text(json.dumps(config, indent=2)))
    return weights_path


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a model saved by :func:`save_model` (directory or ``.safetensors`` file) or one on the Hugging
    Face Hub (``hf-hub:org/name``)."""
    if str(path).startswith(HUB_PREFIX):
        path = hub_snapshot(str(path))
    path = Path(path)
    if path.is_dir():
        weights_path = path / WEIGHTS_FILE
        config_path = path / CONFIG_FILE
        if not weights_path.exists():
            raise CheckpointError(f"no {WEIGHTS_FILE} in {path}: expected a directory written by save_model")
        config = _read_config(config_path) if config_path.exists() else _safetensors_config(weights_path)
    else:
        if not path.is_file():
            raise CheckpointError(f"model not found: {path} (expected a directory written by save_model or a "
                                  ".safetensors file)")
        if not _is_safetensors(path):  # never unpickled: a .pth is read only by read_state_dict, safely
            raise CheckpointError(f"{path} is not a saved model (a directory written by save_model or a .safetensors "
                                  "file); a .pth checkpoint of a preset becomes one with `cct convert PATH --model "
                                  "NAME --output DIR`")
        weights_path = path
        config = _safetensors_config(weights_path)
    if config is None:
        raise CheckpointError(f"{path} has no model config (config.json or safetensors metadata); "
                              "use create_model(name, pretrained=path) instead")
    try:
        model_config = config_from_dict(config)
    except (ValueError, TypeError) as error:  # keys or values that no model of this version has
        raise CheckpointError(f"{path}: its model config does not describe a model: {error}") from None
    if isinstance(model_config, (VisionConfig, TextConfig)):
        model = build_model(model_config)
    else:  # an integration's config builds its own model (see EXTERNAL_KINDS)
        model = model_config.build()
    load_weights(model, read_state_dict(weights_path), source=str(weights_path))
    return model.to(device)


def _read_config(path: Path) -> dict:
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path}: not a valid JSON model config ({error})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: expected a JSON object of model settings, got {type(config).__name__}")
    return config


def _safetensors_config(path: Path) -> dict | None:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except (SafetensorError, OSError) as error:
        raise CheckpointError(f"cannot read {path}: not a valid safetensors file ({error})") from None
    text = metadata.get(_CONFIG_METADATA_KEY)
    try:
        return json.loads(text) if text else None
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{path}: its model config metadata is not valid JSON ({error})") from None


# --------------------------------------------------------------------------------------------- reading


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` or ``.pth``/``.pt`` file, safely; wrappers and ``module.`` unwrapped."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"weight file not found: {path}")
    if path.is_dir():
        path = path / WEIGHTS_FILE
        if not path.exists():
            raise CheckpointError(f"no {WEIGHTS_FILE} in directory {path.parent}")
    if _is_safetensors(path):
        try:
            state = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as error:
            raise CheckpointError(f"cannot read {path}: corrupt or truncated safetensors file ({error})") from None
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as error:
            raise CheckpointError(unpickling_message(path, error)) from None
        except Exception as error:  # torch.load raises many types on damaged files (EOF, zip, seek, ...)
            reason = ": ".join(filter(None, (type(error).__name__, first_sentence(str(error)))))
            raise CheckpointError(f"cannot read {path}: corrupt or truncated checkpoint ({reason})") from None
    return _unwrap(state, path)


def unpickling_message(path: Path, error: pickle.UnpicklingError) -> str:
    """One line for a refused ``.pth``: unsafe objects (never executed) or simply not a checkpoint.

    torch's own text is several lines long and suggests ``weights_only=False``; only its diagnosis is kept.
    """
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    detail = next((line.split("WeightsUnpickler error:", 1)[-1].strip() for line in lines
                   if "global" in line.lower() or "WeightsUnpickler error:" in line), "")  # fmt: skip
    detail = first_sentence(detail)
    if "global" in detail.lower():
        return (
            f"refusing to load {path}: it contains objects other than tensors, which could run code "
            f"(nothing was executed; {detail.rstrip('.')})"
        )
    return f"cannot read {path}: not a PyTorch checkpoint of tensors, or corrupt ({detail or type(error).__name__})"


def first_sentence(text: str) -> str:
    """The first non-empty line of ``text``, cut after its first sentence."""
    line = next((part.strip() for part in text.splitlines() if part.strip()), "")
    end = line.find(". ")
    return line[: end + 1] if end >= 0 else line


def _is_safetensors(path: Path) -> bool:
    if path.suffix == ".safetensors":
        return True
    with open(path, "rb") as handle:
        header = handle.read(9)
    # safetensors: 8-byte little-endian header length, then a JSON object.
    return len(header) == 9 and header[8:9] == b"{"


def _unwrap(state: object, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(state, dict):
        for key in ("state_dict", "model", "state_dict_ema", "model_ema"):
            if key in state and isinstance(state[key], dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} does not hold a state dict of tensors")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return dict(state)


def fetch_weights(url: str, timeout: float = 30.0) -> Path:
    """Return the cached copy of ``url``, downloading it first when a network is available."""
    filename = url.rstrip("/").rsplit("/", 1)[-1]
    target = cache_dir() / filename
    if target.exists():
        return target
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            data = response.read()
    except OSError as error:
        raise CheckpointError(
            f"could not download {url} ({error}); download it on a machine with network access and put it "
            f"at {target} (or pass pretrained=PATH)"
        ) from None
    digest = hashlib.sha256(data).hexdigest()[:12]
    atomic_write(target, lambda tmp: Path(tmp).write_bytes(data))
    logger.info("downloaded %s to %s (sha256 %s...)", url, target, digest)
    return target


# --------------------------------------------------------------------------------------------- loading


def adapt_state_dict(model: nn.Module, state: dict[str, torch.Tensor],
                     new_head: bool = False) -> dict[str, torch.Tensor]:
    """Fit a state dict to ``model``: resize a learnable positional embedding to the model's token grid and
    regenerate a sinusoidal table of another length. A head of another class count is replaced by the model's
    new one (with a warning) only with ``new_head`` (fine-tuning); otherwise it is an error, because a model
    evaluated or resumed with a random head gives silently wrong answers."""
    state = dict(state)
    own = model.state_dict()
    if PE_KEY in state and PE_KEY in own and state[PE_KEY].shape != own[PE_KEY].shape:
        state[PE_KEY] = _adapt_positional_embedding(model, state[PE_KEY])
    elif PE_KEY in state and PE_KEY in own and model.classifier.positional_embedding == "sine":
        table = sinusoidal_table(own[PE_KEY].shape[1], own[PE_KEY].shape[2])
        if not torch.allclose(state[PE_KEY].float(), table, atol=1e-4):
            warnings.warn(
                "the checkpoint's positional embedding is not the sinusoidal table (it was trained as a "
                "learnable one); it is kept, frozen, so that the model computes what was trained",
                stacklevel=3,
            )
    elif PE_KEY in own and PE_KEY not in state and model.classifier.positional_embedding == "sine":
        state[PE_KEY] = own[PE_KEY]  # a table we can compute ourselves
    elif PE_KEY in state and PE_KEY not in own:
        del state[PE_KEY]
        warnings.warn("the checkpoint has a positional embedding but the model uses none: dropped", stacklevel=3)
    if all(key in state and key in own for key in HEAD_KEYS):
        if state[HEAD_KEYS[0]].shape != own[HEAD_KEYS[0]].shape:
            if not new_head:
                raise CheckpointError(
                    f"the weights' head has {state[HEAD_KEYS[0]].shape[0]} classes ({HEAD_KEYS[0]} "
                    f"{tuple(state[HEAD_KEYS[0]].shape)}) but the model's config {own[HEAD_KEYS[0]].shape[0]} "
                    f"({tuple(own[HEAD_KEYS[0]].shape)}): the config does not belong to these weights"
                )
            warnings.warn(
                f"checkpoint head has {state[HEAD_KEYS[0]].shape[0]} classes, the model "
                f"{own[HEAD_KEYS[0]].shape[0]}: the head is newly initialised",
                stacklevel=3,
            )
            for key in HEAD_KEYS:
                state[key] = own[key]
    elif all(key in state for key in HEAD_KEYS) and not any(key in own for key in HEAD_KEYS):
        for key in HEAD_KEYS:
            del state[key]  # a model built without head (num_classes=0)
    return state


def _adapt_positional_embedding(model: nn.Module, embedding: torch.Tensor) -> torch.Tensor:
    classifier = model.classifier
    target = classifier.positional_emb
    if classifier.positional_embedding == "sine":
        return target.detach().clone()
    prefix = classifier.num_prefix_tokens
    if not isinstance(model, CompactTransformer):
        raise CheckpointError(
            f"positional embedding has shape {tuple(embedding.shape)}, the model {tuple(target.shape)}; "
            "text models are not resized: build the model with the checkpoint's seq_len"
        )
    old_tokens = embedding.shape[1] - prefix
    new_h, new_w = model.grid_size
    old_h, old_w = _old_grid(old_tokens, new_h, new_w)
    if embedding.shape[-1] != target.shape[-1]:
        raise CheckpointError(
            f"{PE_KEY}: checkpoint width {embedding.shape[-1]} != model width {target.shape[-1]}"
        )
    logger.info("resizing positional embedding from %dx%d to %dx%d tokens", old_h, old_w, new_h, new_w)
    return resize_positional_embedding(embedding, (old_h, old_w), (new_h, new_w), num_prefix_tokens=prefix)


def _old_grid(tokens: int, new_h: int, new_w: int) -> tuple[int, int]:
    """The checkpoint's token grid: square if possible, else the factorisation closest to the new aspect."""
    side = round(tokens**0.5)
    if side * side == tokens:
        return side, side
    pairs = [(h, tokens // h) for h in range(1, tokens + 1) if tokens % h == 0]
    return min(pairs, key=lambda hw: abs(hw[0] / hw[1] - new_h / new_w))


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], source: str = "checkpoint",
                 adapt: bool = True, new_head: bool = False) -> nn.Module:
    """Load ``state`` into ``model`` with strict key matching; mismatches raise naming keys and shapes.
    ``new_head``: a head of another class count is replaced by the model's own (fine-tuning)."""
    if adapt:
        try:
            state = adapt_state_dict(model, state, new_head=new_head)
        except CheckpointError as error:
            raise CheckpointError(f"{source}: {error}") from None
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong_shape = [
        f"{key}: checkpoint {tuple(state[key].shape)} vs model {tuple(own[key].shape)}"
        for key in sorted(set(own) & set(state))
        if state[key].shape != own[key].shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys {_clip(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_clip(unexpected)}")
    if wrong_shape:
        problems.append(f"shape mismatches {_clip(wrong_shape)}")
    if problems:
        raise CheckpointError(f"{source} does not match the model: " + "; ".join(problems))
    model.load_state_dict(state, strict=True)
    return model


def _clip(items: list[str], limit: int = 8) -> str:
    shown = ", ".join(items[:limit])
    return f"[{shown}{f', ... ({len(items) - limit} more)' if len(items) > limit else ''}]"


def create_model(name: str, pretrained: bool | str | os.PathLike | None = None, **overrides: object) -> nn.Module:
    """Build a preset by name, with config overrides; ``pretrained`` = True (the preset's released weights),
    a path (``.safetensors``, native or Hub-layout directory, the authors' ``.pth``), a URL or ``hf-hub:org/name``.

    Example: ``create_model("cct_7_3x1_32", num_classes=100, img_size=(32, 48), pretrained="w.pth")``.
    """
    preset = get_preset(name)
    model = build_model(preset.build_config(**overrides))
    if pretrained is None or pretrained is False:
        return model
    if pretrained is True:
        if preset.weights_url is None:
            with_weights = ", ".join(n for n in _names_with_weights())
            raise CheckpointError(f"{preset.name} has no released weights; models with weights: {with_weights}")
        path = fetch_weights(preset.weights_url)
    elif str(pretrained).startswith(("http://", "https://")):
        path = fetch_weights(str(pretrained))
    elif str(pretrained).startswith(HUB_PREFIX):
        path = hub_snapshot(str(pretrained))
    else:
        path = Path(pretrained)
    load_weights(model, read_state_dict(path), source=str(path), new_head=True)  # fine-tuning: new class count
    return model


def convert_checkpoint(path: str | os.PathLike, name: str, num_classes: int | None = None) -> nn.Module:
    """The preset ``name`` with the weights of ``path`` (e.g. the authors' ``.pth``): the class count is read
    from the checkpoint's head unless given. Save the result with ``save_pretrained`` or ``save_model``."""
    state = read_state_dict(path)
    if num_classes is None:
        head = state.get(HEAD_KEYS[0])
        if head is None:
            raise CheckpointError(f"{path} has no classifier head ({HEAD_KEYS[0]}): pass num_classes")
        num_classes = head.shape[0]
    model = create_model(name, num_classes=num_classes)
    return load_weights(model, state, source=str(path))


def _names_with_weights() -> list[str]:
    from .presets import list_models

    return list_models(pretrained=True)
