"""Export a model for deployment: ONNX (checked against onnxruntime, with its preprocessing and labels in the
file), a ``torch.export`` program (.pt2) or safetensors.

An ONNX file holds everything ``cct predict model.onnx ...`` needs, in its ``metadata_props`` (all values
strings; lists, numbers and booleans as JSON):

    model, task                  the model's name; "image-classification" or "text-classification"
    compact_transformers_version the package version that exported it
    num_classes, classes         the number of classes and their names (JSON list)
    images:  img_size, in_chans  [H, W] and channels of the input
             mean, std           per-channel normalisation of pixels scaled to 0..1 (JSON lists)
             interpolation       the resize used in validation (bicubic, bilinear or nearest)
             flip_tta            whether the logits are averaged with those of the mirror image (true/false)
             shift_tta           N > 0: also with those of each view shifted by (+N, +N) and (-N, -N) pixels
                                 (reflect padding), the unshifted views weighted 1/2, the shifted 1/2 (0 = none;
                                 absent from files exported before it: 0)
    texts:   vocab               the vocabulary: {"tokenizer": ..., "tokens": [...]} (JSON), token i has id i
             tokenizer, seq_len  the tokenization rule the vocabulary was made for; the texts' length in tokens
             padding_idx         the id that pads a text to seq_len

Inputs: ``images`` float32 (batch, C, H, W), normalised; for text models ``ids`` int64 (batch, seq_len),
right-padded, and ``mask`` bool (batch, seq_len), True for real tokens. Output: ``logits`` (batch, classes).
The batch is dynamic; the text length is fixed (pad shorter texts: padding does not change the logits).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import CheckpointError, ConfigError, ExportError
from ..fileio import atomic_write
from ..models import CompactTransformer, TextCompactTransformer, resolve_name, save_model

logger = logging.getLogger(__name__)

EXPORT_FORMATS = ("onnx", "pt2", "safetensors")
MAX_BATCH = 65536
VERIFY_BATCH = 7  # odd, and not the batch of the traced example, to catch a batch size baked into the graph
# Allowed max |onnxruntime - PyTorch| of the logits, relative to their scale max(1, max |logits|): fp32
# kernels differ by ~1e-6 of it, a wrong graph by far more.
DEFAULT_TOLERANCE = 1e-4
INSTALL_HINT = "pip install 'compact-transformers[export]'"


def _onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise ConfigError(f"running ONNX models needs onnxruntime: {INSTALL_HINT}") from None
    return onnxruntime


def _is_text(model: nn.Module) -> bool:
    return isinstance(model, TextCompactTransformer)


def _check_exportable(model: nn.Module) -> None:
    if not isinstance(model, (CompactTransformer, TextCompactTransformer)):
        raise ConfigError(f"can export CompactTransformer and TextCompactTransformer models, got {type(model).__name__}")


# ------------------------------------------------------------------------------------------------ inputs


def input_names(model: nn.Module) -> tuple[str, ...]:
    """Names of the ONNX inputs: ``("images",)`` or, for a text model, ``("ids", "mask")``."""
    return ("ids", "mask") if _is_text(model) else ("images",)


def example_input(model: nn.Module, batch: int = 2, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Random arguments of ``model``'s forward: normal images, or token ids with a right-padded mask
    (lengths from 1 to seq_len, the last text full)."""
    generator = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    config = model.config
    if not _is_text(model):
        return (torch.randn(batch, config.in_chans, *config.img_size, generator=generator).to(device),)
    ids = torch.randint(0, config.vocab_size, (batch, config.seq_len), generator=generator)
    lengths = torch.randint(1, config.seq_len + 1, (batch,), generator=generator)
    lengths[-1] = config.seq_len
    mask = torch.arange(config.seq_len)[None, :] < lengths[:, None]
    if config.padding_idx is not None:
        ids = ids.masked_fill(~mask, config.padding_idx)
    return ids.to(device), mask.to(device)


def _dynamic_shapes(model: nn.Module) -> tuple[dict, ...]:
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    # The text length stays seq_len: the convolutional tokenizers specialise on it when traced.
    return tuple({0: batch} for _ in input_names(model))


def export_program(model: nn.Module) -> torch.export.ExportedProgram:
    """``torch.export`` of the eval-mode model with a dynamic batch dimension."""
    _check_exportable(model)
    model = model.eval()
    return torch.export.export(model, example_input(model), dynamic_shapes=_dynamic_shapes(model))


# -------------------------------------------------------------------------------------------- metadata


def model_name(model: nn.Module, source: str | None = None) -> str:
    """A short name for the model: the preset named by ``source``, else its file or folder name; without a
    source the family (``cct``, ``text_cct``)."""
    if source:
        try:
            return resolve_name(source)
        except ConfigError:
            path = Path(source)
            return path.stem if path.suffix == ".safetensors" else path.name
    return ("text_" if _is_text(model) else "") + model.config.family


def onnx_metadata(model: nn.Module, name: str | None = None) -> dict[str, str]:
    """The ``metadata_props`` of the ONNX export (the module docstring lists them), read from the model's
    config: what ``cct predict`` does with the model, recorded by training in ``config.extra``. ``name``: the
    preset, run directory or file the model came from (see :func:`model_name`)."""
    from .. import __version__

    config, extra = model.config, model.config.extra
    classes = extra.get("classes") or [str(i) for i in range(config.num_classes)]
    metadata = {
        "model": model_name(model, name),
        "task": "text-classification" if _is_text(model) else "image-classification",
        "compact_transformers_version": __version__,
        "num_classes": str(config.num_classes),
        "classes": json.dumps(list(classes)),
    }
    if _is_text(model):
        metadata.update(seq_len=str(config.seq_len), padding_idx=json.dumps(config.padding_idx))
        if "vocab" in extra:  # absent from a model that was never trained on a dataset
            metadata.update(vocab=json.dumps(extra["vocab"]), tokenizer=str(extra["vocab"].get("tokenizer")))
    else:
        metadata.update(
            img_size=json.dumps(list(config.img_size)), in_chans=str(config.in_chans),
            mean=json.dumps(list(config.mean)), std=json.dumps(list(config.std)),
            interpolation=extra.get("interpolation", "bicubic"),  # as EvalTransform.for_model
            flip_tta=json.dumps(bool(extra.get("flip_tta", False))),
            shift_tta=json.dumps(int(extra.get("shift_tta", 0))),
        )  # fmt: skip
    return metadata


@dataclass(kw_only=True)
class OnnxConfig:
    """A model's config as far as an ONNX file's metadata tells it: the attributes that preprocessing and
    decoding read of a model config (img_size, in_chans, mean, std, seq_len, num_classes, extra)."""

    name: str
    task: str
    num_classes: int
    version: str | None = None
    img_size: tuple[int, int] | None = None
    in_chans: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    seq_len: int | None = None
    padding_idx: int | None = None
    extra: dict = field(default_factory=dict)  # classes; interpolation, flip_tta and shift_tta, or vocab

    @classmethod
    def from_metadata(cls, metadata: dict[str, str], source: str = "the ONNX model") -> OnnxConfig:
        """Parse :func:`onnx_metadata`; CheckpointError if the file was not written by :func:`export_onnx`."""
        try:
            task = metadata["task"]
            config = cls(name=metadata["model"], task=task, num_classes=int(metadata["num_classes"]),
                         version=metadata.get("compact_transformers_version"),
                         extra={"classes": json.loads(metadata["classes"])})  # fmt: skip
            if task == "text-classification":
                config.seq_len = int(metadata["seq_len"])
                config.padding_idx = json.loads(metadata["padding_idx"])
                if "vocab" in metadata:
                    config.extra["vocab"] = json.loads(metadata["vocab"])
            else:
                config.img_size = tuple(json.loads(metadata["img_size"]))
                config.in_chans = int(metadata["in_chans"])
                config.mean = tuple(json.loads(metadata["mean"]))
                config.std = tuple(json.loads(metadata["std"]))
                config.extra.update(interpolation=metadata["interpolation"], flip_tta=json.loads(metadata["flip_tta"]),
                                    shift_tta=int(json.loads(metadata.get("shift_tta", "0"))))
        except (KeyError, ValueError, TypeError) as error:
            raise CheckpointError(f"{source}: its metadata lacks or garbles {error}; expected an ONNX file written by "
                              "`cct export --format onnx`") from None
        return config


# -------------------------------------------------------------------------------------------- running


class OnnxClassifier(nn.Module):
    """An exported ONNX file run by onnxruntime (CPU), standing in for the PyTorch model: called with the
    same inputs, it returns float32 logits, and ``config`` is read from the file's metadata."""

    def __init__(self, path: str | os.PathLike) -> None:
        super().__init__()
        ort = _onnxruntime()
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"ONNX model not found: {path}")
        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.config = OnnxConfig.from_metadata(self.session.get_modelmeta().custom_metadata_map, source=str(path))
        self.input_names = [item.name for item in self.session.get_inputs()]

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Images (B, C, H, W), or token ids (B, L <= seq_len) with their mask, padded here to seq_len."""
        if self.config.seq_len is None:
            feed = {self.input_names[0]: np.ascontiguousarray(x.detach().float().cpu().numpy())}
        else:
            pad = self.config.padding_idx if self.config.padding_idx is not None else 0
            if mask is None:
                mask = x != pad if self.config.padding_idx is not None else torch.ones_like(x, dtype=torch.bool)
            missing = self.config.seq_len - x.shape[1]
            if missing < 0:
                raise ValueError(f"sequence length {x.shape[1]} exceeds the model's seq_len {self.config.seq_len}")
            ids = nn.functional.pad(x.long(), (0, missing), value=pad)
            mask = nn.functional.pad(mask.bool(), (0, missing), value=False)
            feed = dict(zip(self.input_names, (ids.cpu().numpy(), mask.cpu().numpy())))
        (logits,) = self.session.run(None, feed)
        return torch.from_numpy(logits).to(x.device)


def load_onnx(path: str | os.PathLike) -> OnnxClassifier:
    """An ONNX file written by :func:`export_onnx`, ready to predict (see :class:`OnnxClassifier`)."""
    return OnnxClassifier(path)


@torch.no_grad()
def verify_onnx(model: nn.Module, path: str | os.PathLike, batch: int = VERIFY_BATCH,
                tolerance: float = DEFAULT_TOLERANCE) -> float:
    """Max |difference| of the logits of onnxruntime and of the eval-mode fp32 PyTorch model on a random
    batch; ExportError if it exceeds ``tolerance`` x max(1, max |logits|)."""
    inputs = example_input(model.eval(), batch=batch, seed=1)
    expected = model(*inputs).float().cpu()
    got = load_onnx(path)(*inputs).float().cpu()
    if got.shape != expected.shape:
        raise ExportError(f"onnxruntime returned logits of shape {tuple(got.shape)}, PyTorch {tuple(expected.shape)}")
    diff = (got - expected).abs().max().item() if expected.numel() else 0.0
    allowed = tolerance * max(1.0, expected.abs().max().item() if expected.numel() else 0.0)
    if not diff <= allowed:  # NaN fails too
        raise ExportError(f"onnxruntime and PyTorch disagree: max |diff| of the logits {diff:.2e} over batch "
                          f"{batch} exceeds {allowed:.2e} (tolerance {tolerance:g} x logit scale); nothing written")
    logger.info("verified with onnxruntime: max |diff| %.1e over batch %d (allowed %.1e)", diff, batch, allowed)
    return diff


# --------------------------------------------------------------------------------------------- export


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Keep the exporter's progress reports (hundreds of INFO lines of graph rewrites) and its warnings about
    optional torchvision ops and deprecations out of the output of ``cct export``."""
    levels = {"onnxscript": logging.WARNING, "onnx_ir": logging.WARNING, "torch.onnx": logging.ERROR}
    loggers = {name: logging.getLogger(name) for name in levels}
    before = {name: log.level for name, log in loggers.items()}
    try:
        for name, log in loggers.items():
            log.setLevel(max(levels[name], log.getEffectiveLevel()))
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning)
            warnings.filterwarnings("ignore", message=".*axis name")
            yield
    finally:
        for name, log in loggers.items():
            log.setLevel(before[name])


def export_onnx(model: nn.Module, path: str | os.PathLike, opset: int = 18, name: str | None = None,
                verify: bool = True, tolerance: float = DEFAULT_TOLERANCE) -> Path:
    """Write ``model`` (eval mode, fp32) as ONNX with its preprocessing and labels in the metadata; with
    ``verify``, check it against onnxruntime first. The file appears only once it is complete and verified."""
    _check_exportable(model)
    if not tolerance > 0:
        raise ConfigError(f"the verification tolerance must be > 0, got {tolerance}")
    try:
        import onnxscript  # noqa: F401 - torch.onnx's exporter needs it
    except ImportError:
        raise ConfigError(f"ONNX export needs onnxscript: {INSTALL_HINT}") from None
    if verify:
        _onnxruntime()  # fail before the slow export
    model = model.eval()
    with _quiet_exporter():
        program = torch.onnx.export(
            model,
            example_input(model),
            None,
            input_names=list(input_names(model)),
            output_names=["logits"],
            dynamic_shapes=_dynamic_shapes(model),
            opset_version=opset,
            dynamo=True,
            verbose=False,
        )
    program.model.metadata_props.update(onnx_metadata(model, name=name))

    def write(tmp: str) -> None:
        program.save(tmp, external_data=False)
        if verify:
            verify_onnx(model, tmp, tolerance=tolerance)

    path = Path(path)
    atomic_write(path, write)
    return path


def export_model(model: nn.Module, output: str | os.PathLike, fmt: str = "onnx", opset: int = 18,
                 name: str | None = None, verify: bool = True, tolerance: float = DEFAULT_TOLERANCE) -> Path:
    """Export ``model`` as ``fmt`` (one of EXPORT_FORMATS) to ``output``; ``name``, ``verify`` and
    ``tolerance`` are for ONNX (see :func:`export_onnx`)."""
    if fmt not in EXPORT_FORMATS:
        raise ConfigError(f"export format must be one of {EXPORT_FORMATS}, got {fmt!r}")
    output = Path(output)
    if fmt == "safetensors":
        return save_model(model, output)
    if fmt == "pt2":
        buffer = io.BytesIO()  # torch.export.save warns about a file not named .pt2, such as atomic_write's
        torch.export.save(export_program(model), buffer)
        atomic_write(output, lambda tmp: Path(tmp).write_bytes(buffer.getvalue()))
        return output
    return export_onnx(model, output, opset=opset, name=name, verify=verify, tolerance=tolerance)
