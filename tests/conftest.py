"""Independent reference implementations for the model tests.

Everything here is written from the paper notes (layer order, key names, shapes), not from the library:
a sinusoidal table, a state dict in the authors' key layout filled with random tensors, and an explicit
forward pass in plain torch ops over such a state dict.
"""

from __future__ import annotations

import math
import signal
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F


# A shell that starts the suite in the background makes it ignore SIGINT, and every child process inherits
# that: Python then installs no KeyboardInterrupt handler, and the CLI's interrupt tests see none. A handler
# (unlike "ignore") is reset to the default on exec, so the children get SIGINT as a terminal gives it.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def reference_sine_table(num_positions: int, dim: int) -> torch.Tensor:
    """pe[p, i] = p / 10000 ** (2 * (i // 2) / d): sin on even i, cos on odd i. Shape (1, P, d)."""
    table = torch.empty(num_positions, dim, dtype=torch.float64)
    for p in range(num_positions):
        for i in range(dim):
            angle = p / 10000 ** (2 * (i // 2) / dim)
            table[p, i] = math.sin(angle) if i % 2 == 0 else math.cos(angle)
    return table.float()[None]


def _random(*shape: int, scale: float = 0.1, generator: torch.Generator) -> torch.Tensor:
    return torch.randn(*shape, generator=generator) * scale


def reference_state_dict(
    family: str,
    *,
    embed_dim: int,
    num_layers: int,
    mlp_ratio: float,
    num_classes: int,
    num_tokens: int,
    in_chans: int = 3,
    kernel_size: int = 3,
    n_conv_layers: int = 1,
    patch_size: int = 4,
    conv_width: int = 64,
    positional: str = "learnable",
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Random tensors under the reference keys and shapes (paper-notes "Reference state_dict keys")."""
    g = torch.Generator().manual_seed(seed)
    d, hidden = embed_dim, int(embed_dim * mlp_ratio)
    state: dict[str, torch.Tensor] = {}
    if family == "cct":
        widths = [in_chans] + [conv_width] * (n_conv_layers - 1) + [d]
        for i in range(n_conv_layers):
            fan_in = widths[i] * kernel_size**2
            state[f"tokenizer.conv_layers.{i}.0.weight"] = _random(
                widths[i + 1], widths[i], kernel_size, kernel_size, scale=(2 / fan_in) ** 0.5, generator=g
            )
    else:
        fan_in = in_chans * patch_size**2
        state["tokenizer.conv_layers.0.0.weight"] = _random(
            d, in_chans, patch_size, patch_size, scale=(1 / fan_in) ** 0.5, generator=g
        )
        state["tokenizer.conv_layers.0.0.bias"] = _random(d, generator=g)
    prefix = 1 if family == "vit" else 0
    if positional == "learnable":
        state["classifier.positional_emb"] = _random(1, num_tokens + prefix, d, scale=0.2, generator=g)
    elif positional == "sine":
        state["classifier.positional_emb"] = reference_sine_table(num_tokens + prefix, d)
    if family == "vit":
        state["classifier.class_emb"] = _random(1, 1, d, scale=0.5, generator=g)
    else:
        state["classifier.attention_pool.weight"] = _random(1, d, scale=0.3, generator=g)
        state["classifier.attention_pool.bias"] = _random(1, generator=g)
    for j in range(num_layers):
        block = f"classifier.blocks.{j}."
        for norm in ("pre_norm", "norm1"):
            state[block + norm + ".weight"] = 1 + _random(d, generator=g)
            state[block + norm + ".bias"] = _random(d, generator=g)
        state[block + "self_attn.qkv.weight"] = _random(3 * d, d, scale=d**-0.5, generator=g)
        state[block + "self_attn.proj.weight"] = _random(d, d, scale=d**-0.5, generator=g)
        state[block + "self_attn.proj.bias"] = _random(d, generator=g)
        state[block + "linear1.weight"] = _random(hidden, d, scale=d**-0.5, generator=g)
        state[block + "linear1.bias"] = _random(hidden, generator=g)
        state[block + "linear2.weight"] = _random(d, hidden, scale=hidden**-0.5, generator=g)
        state[block + "linear2.bias"] = _random(d, generator=g)
    state["classifier.norm.weight"] = 1 + _random(d, generator=g)
    state["classifier.norm.bias"] = _random(d, generator=g)
    state["classifier.fc.weight"] = _random(num_classes, d, scale=d**-0.5, generator=g)
    state["classifier.fc.bias"] = _random(num_classes, generator=g)
    return state


def _layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    mean = x.mean(dim=-1, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * weight + bias


def _gelu(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))


def _attention(x: torch.Tensor, state: dict, prefix: str, num_heads: int) -> torch.Tensor:
    batch, tokens, dim = x.shape
    head_dim = dim // num_heads
    qkv = x @ state[prefix + "qkv.weight"].T  # rows ordered q, k, v; each heads x head_dim
    q, k, v = (
        part.reshape(batch, tokens, num_heads, head_dim).transpose(1, 2) for part in qkv.split(dim, dim=-1)
    )
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(head_dim)
    weights = torch.exp(scores - scores.amax(dim=-1, keepdim=True))
    weights = weights / weights.sum(dim=-1, keepdim=True)
    out = (weights @ v).transpose(1, 2).reshape(batch, tokens, dim)
    return out @ state[prefix + "proj.weight"].T + state[prefix + "proj.bias"]


def reference_forward(
    state: dict[str, torch.Tensor],
    images: torch.Tensor,
    *,
    family: str,
    num_heads: int,
    kernel_size: int = 3,
    patch_size: int = 4,
) -> torch.Tensor:
    """The reference network written out: tokenizer, + PE, encoder blocks, final norm, pooling, fc."""
    x = images
    if family == "cct":
        i = 0
        while f"tokenizer.conv_layers.{i}.0.weight" in state:
            x = F.conv2d(
                x,
                state[f"tokenizer.conv_layers.{i}.0.weight"],
                stride=max(1, kernel_size // 2 - 1),
                padding=max(1, kernel_size // 2),
            )
            x = F.max_pool2d(torch.relu(x), kernel_size=3, stride=2, padding=1)
            i += 1
    else:
        x = F.conv2d(
            x, state["tokenizer.conv_layers.0.0.weight"], state["tokenizer.conv_layers.0.0.bias"], stride=patch_size
        )
    x = x.flatten(2).transpose(1, 2)  # (B, H'W', d), row-major over the grid
    if family == "vit":
        x = torch.cat([state["classifier.class_emb"].expand(x.shape[0], -1, -1), x], dim=1)
    if "classifier.positional_emb" in state:
        x = x + state["classifier.positional_emb"]
    j = 0
    while f"classifier.blocks.{j}.pre_norm.weight" in state:
        p = f"classifier.blocks.{j}."
        x = x + _attention(_layer_norm(x, state[p + "pre_norm.weight"], state[p + "pre_norm.bias"]),
                           state, p + "self_attn.", num_heads)
        x = _layer_norm(x, state[p + "norm1.weight"], state[p + "norm1.bias"])
        hidden = _gelu(x @ state[p + "linear1.weight"].T + state[p + "linear1.bias"])
        x = x + hidden @ state[p + "linear2.weight"].T + state[p + "linear2.bias"]
        j += 1
    x = _layer_norm(x, state["classifier.norm.weight"], state["classifier.norm.bias"])
    if family == "vit":
        pooled = x[:, 0]
    else:
        scores = x @ state["classifier.attention_pool.weight"].T + state["classifier.attention_pool.bias"]
        weights = torch.exp(scores - scores.amax(dim=1, keepdim=True))
        weights = weights / weights.sum(dim=1, keepdim=True)  # (B, N, 1), softmax over tokens
        pooled = (weights * x).sum(dim=1)
    return pooled @ state["classifier.fc.weight"].T + state["classifier.fc.bias"]


@pytest.fixture
def ref() -> SimpleNamespace:
    """The reference helpers, as a fixture (test modules here are not an importable package)."""
    return SimpleNamespace(
        sine_table=reference_sine_table, state_dict=reference_state_dict, forward=reference_forward
    )


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
