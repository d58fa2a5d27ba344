"""Export a vision model to ONNX (dynamic batch), a ``torch.export`` program (.pt2) or safetensors."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..errors import ConfigError
from ..models import CompactTransformer, save_model

EXPORT_FORMATS = ("onnx", "pt2", "safetensors")


def example_input(model: CompactTransformer, batch: int = 2) -> torch.Tensor:
    config = model.config
    return torch.randn(batch, config.in_chans, *config.img_size)


def export_program(model: CompactTransformer) -> torch.export.ExportedProgram:
    """``torch.export`` of the eval-mode model with a dynamic batch dimension."""
    batch = torch.export.Dim("batch", min=1, max=65536)
    return torch.export.export(model.eval(), (example_input(model),), dynamic_shapes=({0: batch},))


def export_onnx(model: CompactTransformer, path: Path, opset: int = 18) -> Path:
    """ONNX with input ``images`` (batch, C, H, W), output ``logits`` (batch, classes); batch is dynamic."""
    model = model.eval()
    torch.onnx.export(
        model,
        (example_input(model),),
        str(path),
        input_names=["images"],
        output_names=["logits"],
        dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=65536)},),
        opset_version=opset,
        dynamo=True,
        external_data=False,
    )
    return path


def export_model(model: nn.Module, output: str | Path, fmt: str = "onnx", opset: int = 18) -> Path:
    if fmt not in EXPORT_FORMATS:
        raise ConfigError(f"export format must be one of {EXPORT_FORMATS}, got {fmt!r}")
    if not isinstance(model, CompactTransformer) and fmt != "safetensors":
        raise ConfigError(f"{fmt} export is for vision models; save text models as safetensors")
    output = Path(output)
    if fmt == "safetensors":
        return save_model(model, output)
    output.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "pt2":
        torch.export.save(export_program(model), str(output))
        return output
    return export_onnx(model, output, opset=opset)
