"""The README's integration snippets run as written: each ``### `` part of its "Integrations" section, in a
fresh folder that holds a small trained run (``runs/digits``) and a few digit images (``images/``).

```python and ```bash blocks run (python in a subprocess, bash with -euo pipefail, `cct` on the PATH);
```shell blocks need the network or files the test machine lacks and are not run. A part whose extra is not
installed is skipped with the reason (timm runs in .venv-timm, see the Makefile).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from compact_transformers.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"
TINY = ["--samples-per-class", "5", "--epochs", "1", "--batch-size", "16", "--quiet", "--device", "cpu"]
# the module each part needs, by a word of its title
NEEDS = {"Hub": "huggingface_hub", "transformers": "transformers", "timm": "timm", "ONNX": "onnxruntime",
         "TensorBoard": "tensorboard"}  # fmt: skip


def integration_parts() -> dict[str, list[tuple[str, str]]]:
    """{title: [(language, code), ...]} of the README's Integrations section (titles without their
    parenthesised install line)."""
    text = README.read_text()
    section = text.split("\n## Integrations\n", 1)[1].split("\n## ", 1)[0]
    parts = {}
    for chunk in section.split("\n### ")[1:]:
        title, body = chunk.split("\n", 1)
        parts[title.split(" (")[0].strip()] = re.findall(r"```(\w+)\n(.*?)```", body, flags=re.S)
    return parts


PARTS = integration_parts()


def test_every_integration_has_a_runnable_snippet() -> None:
    assert {"Hub", "transformers", "timm", "ONNX", "TensorBoard"} <= {word for title in PARTS for word in NEEDS
                                                                       if word in title}
    for title, blocks in PARTS.items():
        assert any(lang in ("python", "bash") for lang, _ in blocks), f"{title}: nothing runnable"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from PIL import Image
    from sklearn.datasets import load_digits

    root = tmp_path_factory.mktemp("readme")
    assert main(["train", *TINY, "--output", str(root / "runs"), "--name", "digits"]) == 0
    digits = load_digits()
    (root / "images").mkdir()
    for i in range(3):
        pixels = (digits.images[i] * 255 / 16).astype(np.uint8)
        Image.fromarray(pixels).save(root / "images" / f"digit{i}_{digits.target[i]}.png")
    return root


@pytest.mark.parametrize("title", list(PARTS))
def test_readme_snippets_run(title: str, trained: Path, tmp_path: Path) -> None:
    for word, module in NEEDS.items():
        if word in title:
            pytest.importorskip(module, reason=f"the README's {title} part needs {module}")
    shutil.copytree(trained, tmp_path, dirs_exist_ok=True)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}  # fmt: skip
    for lang, code in PARTS[title]:
        if lang == "python":
            command = [sys.executable, "-c", code]
        elif lang == "bash":
            command = ["bash", "-euo", "pipefail", "-c", code]
        else:
            continue
        done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"{title} {lang} block failed:\n{code}\n{done.stdout[-2000:]}{done.stderr[-3000:]}"
