"""Optimizer construction: weight decay only where it belongs, AdamW/Adam/SGD with the fastest kernel."""

from __future__ import annotations

import torch

from .recipe import TrainConfig

OPTIMIZER_KERNELS = ("fastest", "plain")

# Learnable embeddings that, like norms and biases, are not weight-decayed.
NO_DECAY_SUFFIXES = ("positional_emb", "class_emb")


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Split the trainable parameters into a decayed group and a group without weight decay.

    No decay for 1-D parameters (norm weights, biases) and for names ending in `positional_emb` or
    `class_emb`. Frozen parameters are left out; empty groups are dropped. Each group carries a
    `param_names` list for inspection.
    """
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    decay: list[torch.nn.Parameter] = []
    decay_names: list[str] = []
    no_decay: list[torch.nn.Parameter] = []
    no_decay_names: list[str] = []
    for name, param in model.named_parameters():  # shared parameters are listed once
        if not param.requires_grad:
            continue
        if param.ndim <= 1 or name.endswith(NO_DECAY_SUFFIXES):
            no_decay.append(param)
            no_decay_names.append(name)
        else:
            decay.append(param)
            decay_names.append(name)
    groups = [
        {"params": decay, "param_names": decay_names, "weight_decay": weight_decay},
        {"params": no_decay, "param_names": no_decay_names, "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


def build_optimizer(model: torch.nn.Module, config: TrainConfig, kernel: str = "fastest") -> torch.optim.Optimizer:
    """The optimizer of `config` (adamw, adam, or sgd with momentum 0.9) at `config.scaled_lr`.

    ``kernel="fastest"``: the fused kernel when this torch supports it for the parameters' device and dtype,
    else foreach; ``"plain"``: torch's default implementation (the reference code's, for `cct bench`).
    """
    if kernel not in OPTIMIZER_KERNELS:
        raise ValueError(f"kernel must be one of {OPTIMIZER_KERNELS}, got {kernel!r}")
    groups = param_groups(model, config.weight_decay)
    if not groups:
        raise ValueError("the model has no trainable parameters (all have requires_grad=False)")
    lr = config.scaled_lr

    def make(fused: bool | None) -> torch.optim.Optimizer:
        impl = {"fused": True} if fused else ({"foreach": True} if fused is False else {})
        if config.opt == "adamw":
            return torch.optim.AdamW(groups, lr=lr, betas=config.betas, eps=config.eps, **impl)
        if config.opt == "adam":
            return torch.optim.Adam(groups, lr=lr, betas=config.betas, eps=config.eps, **impl)
        if config.opt == "sgd":
            return torch.optim.SGD(groups, lr=lr, momentum=0.9, **impl)
        raise ValueError(f"opt must be one of adamw, adam, sgd, got {config.opt!r}")

    if kernel == "plain":
        return make(fused=None)
    try:
        return make(fused=True)
    except (RuntimeError, TypeError, ValueError):
        # torch checks fused support (device type, dtype, torch version) when the optimizer is built;
        # a genuine error raises again from the foreach attempt.
        return make(fused=False)


class MasterWeightOptimizer:
    """Mixed precision with the model itself in bf16/fp16: the wrapped optimizer updates fp32 master copies
    of the parameters from their gradients, then the model gets the rounded values back (the classic
    scheme; a `cct bench` lever, `--variants lp-weights`). Build it before casting the model."""

    def __init__(self, model: torch.nn.Module, config: TrainConfig) -> None:
        named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
        self.params = [p for _, p in named]
        shadow = torch.nn.Module()  # fp32 copies under the model's names, so that weight decay groups match
        for index, (name, p) in enumerate(named):
            shadow.register_parameter(f"p{index}_{name.replace('.', '_')}", torch.nn.Parameter(p.detach().float().clone()))
        self.masters = list(shadow.parameters())
        self.inner = build_optimizer(shadow, config)
        self.param_groups = self.inner.param_groups
        self.state = self.inner.state

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        for master, p in zip(self.masters, self.params):
            master.grad = None if p.grad is None else p.grad.float()
        self.inner.step()
        torch._foreach_copy_(self.params, self.masters)

    def state_dict(self) -> dict:
        return self.inner.state_dict()
