"""Model complexity: trainable parameters, multiply-accumulates (attention matmuls included), tokens."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .layers import Attention
from .vision import CompactTransformer


@dataclass
class Complexity:
    name: str
    params: int  # trainable, the word embedding excluded (as the paper counts text models)
    macs: int  # one image, forward, counted by torch.utils.flop_counter (FLOPs / 2)
    tokens: int
    img_size: tuple[int, int] | None
    num_classes: int
    embedding_params: int = 0  # the word embedding of a text model (frozen pretrained vectors in the paper)

    def to_dict(self) -> dict:
        return asdict(self)


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def count_macs(model: nn.Module, example: torch.Tensor) -> int:
    """MACs of one forward pass on ``example`` (conv, linear and the attention matmuls).

    Attention runs in its explicit form here: the flop counter does not see inside every fused SDPA kernel.
    """
    was_training = model.training
    attentions = [m for m in model.modules() if isinstance(m, Attention)]
    impls = [m.impl for m in attentions]
    model.eval()
    try:
        for module in attentions:
            module.impl = "explicit"
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(example)
    finally:
        model.train(was_training)
        for module, impl in zip(attentions, impls):
            module.impl = impl
    return counter.get_total_flops() // 2


def complexity(model: nn.Module, name: str = "") -> Complexity:
    """Parameters, MACs per sample and token count of a model at its configured input size.

    Build the model under ``torch.device("meta")`` to count without allocating or computing anything.
    """
    config = model.config
    device = next(model.parameters()).device  # "meta" works too: shapes only, nothing computed
    embedding = 0
    if isinstance(model, CompactTransformer):
        example = torch.zeros(1, config.in_chans, *config.img_size, device=device)
        tokens, img_size = model.num_tokens, config.img_size
    else:
        example = torch.full((1, config.seq_len), 2, dtype=torch.long, device=device)
        tokens, img_size = model.classifier.seq_len - model.classifier.num_prefix_tokens, None
        embedding = model.embedder.embeddings.weight.numel()
    return Complexity(
        name=name,
        params=sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and not n.startswith("embedder.")),
        embedding_params=embedding,
        macs=count_macs(model, example),
        tokens=tokens,
        img_size=img_size,
        num_classes=config.num_classes,
    )
