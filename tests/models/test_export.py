"""Deployment: torch.export with a dynamic batch, torch.compile(fullgraph); ONNX is in tests/integrations/test_onnx.py."""

from __future__ import annotations

import pytest
import torch

from compact_transformers.models import create_model

# (preset, overrides, input shape without batch)
CASES = {
    "cct_2_3x2_32": ("cct_2_3x2_32", {}, (3, 32, 32)),
    "cvt_2_4_32": ("cvt_2_4_32", {}, (3, 32, 32)),
    "vit_2_4_32": ("vit_2_4_32", {}, (3, 32, 32)),
    "cct_gray_28": ("cct_2_3x2_32", dict(in_chans=1, img_size=28), (1, 28, 28)),
}
_EXPORTED: dict[str, tuple[torch.nn.Module, torch.export.ExportedProgram]] = {}


def _exported(case: str) -> tuple[torch.nn.Module, torch.export.ExportedProgram]:
    """Eager model and its exported program with a dynamic batch dimension, built once per case."""
    if case not in _EXPORTED:
        name, overrides, shape = CASES[case]
        model = create_model(name, **overrides).eval()
        batch = torch.export.Dim("batch", min=1, max=1024)
        program = torch.export.export(model, (torch.randn(2, *shape),), dynamic_shapes={"x": {0: batch}})
        _EXPORTED[case] = (model, program)
    return _EXPORTED[case]


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_torch_export_with_dynamic_batch(case: str) -> None:
    model, program = _exported(case)
    exported = program.module()
    shape = CASES[case][2]
    for batch in (2, 5):
        images = torch.randn(batch, *shape)
        with torch.no_grad():
            expected = model(images)
            got = exported(images)
        assert got.shape == (batch, model.num_classes)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_compile_fullgraph_captures_the_whole_model() -> None:
    """One graph, no breaks (fullgraph=True raises on any), traced through AOTAutograd.

    The aot_eager backend checks what is ours (capture without graph breaks, functionalised graph equal to
    eager) without inductor's C++ build, which takes 10-50 s on 2 cores.
    """
    torch._dynamo.reset()
    model = create_model("cct_2_3x2_32", num_layers=1).eval()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(compiled(images), model(images), atol=1e-5, rtol=0)


def test_compile_fullgraph_in_training_with_dropout_paths() -> None:
    """Training mode (drop-path, attention dropout, explicit attention under "auto") also compiles whole."""
    torch._dynamo.reset()
    model = create_model("cvt_2_4_32", num_layers=1, drop_path=0.2).train()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    out = compiled(torch.randn(2, 3, 32, 32))
    out.sum().backward()
    assert model.classifier.fc.weight.grad is not None
