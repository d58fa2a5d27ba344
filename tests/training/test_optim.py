from __future__ import annotations

import pytest
import torch
from torch import nn

from compact_transformers.training.optim import build_optimizer, param_groups
from compact_transformers.training.recipe import TrainConfig


class Head(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.positional_emb = nn.Parameter(torch.randn(1, 4, 8))
        self.class_emb = nn.Parameter(torch.randn(1, 1, 8))
        self.norm = nn.LayerNorm(8)
        self.fc = nn.Linear(8, 3)


class Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, bias=False)
        self.classifier = Head()
        self.frozen = nn.Linear(8, 8)
        self.frozen.requires_grad_(False)
        self.tied = self.classifier.fc  # the same module twice: its parameters must appear once

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.conv(x).flatten(2).transpose(1, 2)[:, :4] + self.classifier.positional_emb
        tokens = torch.cat([self.classifier.class_emb.expand(len(x), -1, -1), tokens], dim=1)
        return self.classifier.fc(self.classifier.norm(self.frozen(tokens)).mean(1))


def names_by_decay(groups: list[dict]) -> dict[float, set[str]]:
    return {g["weight_decay"]: set(g["param_names"]) for g in groups}


def test_param_groups_split():
    groups = param_groups(Toy(), weight_decay=0.06)
    by_decay = names_by_decay(groups)
    assert by_decay[0.06] == {"conv.weight", "classifier.fc.weight"}
    assert by_decay[0.0] == {
        "classifier.positional_emb", "classifier.class_emb", "classifier.norm.weight",
        "classifier.norm.bias", "classifier.fc.bias",
    }  # fmt: skip


def test_param_groups_cover_trainable_params_exactly_once():
    model = Toy()
    groups = param_groups(model, weight_decay=0.1)
    listed = [id(p) for g in groups for p in g["params"]]
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert len(listed) == len(set(listed)) and set(listed) == trainable
    assert id(model.frozen.weight) not in listed
    for g in groups:
        assert len(g["params"]) == len(g["param_names"])


def test_empty_groups_dropped_and_bad_weight_decay():
    assert [g["weight_decay"] for g in param_groups(nn.LayerNorm(4), 0.05)] == [0.0]
    with pytest.raises(ValueError, match="weight_decay must be >= 0"):
        param_groups(nn.LayerNorm(4), -1.0)


@pytest.mark.parametrize(
    "opt, cls", [("adamw", torch.optim.AdamW), ("adam", torch.optim.Adam), ("sgd", torch.optim.SGD)]
)
def test_build_optimizer(opt, cls):
    config = TrainConfig(opt=opt, batch_size=64, lr=1e-3, betas=(0.8, 0.99))
    optimizer = build_optimizer(Toy(), config)
    assert isinstance(optimizer, cls)
    assert all(g["lr"] == pytest.approx(5e-4) for g in optimizer.param_groups)  # scaled to the batch size
    if opt == "sgd":
        assert optimizer.defaults["momentum"] == 0.9
    else:
        assert optimizer.defaults["betas"] == (0.8, 0.99)


def test_adamw_decays_only_the_decay_group():
    torch.manual_seed(0)
    model = Toy()
    optimizer = build_optimizer(model, TrainConfig(lr=0.1, weight_decay=0.5))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)  # zero gradient: only weight decay moves a parameter
    optimizer.step()
    after = dict(model.named_parameters())
    assert torch.allclose(after["conv.weight"], before["conv.weight"] * (1 - 0.1 * 0.5))
    for name in ("classifier.positional_emb", "classifier.class_emb", "classifier.norm.weight", "classifier.fc.bias"):
        assert torch.equal(after[name], before[name])


def test_optimizer_trains_and_no_trainable_params_error():
    torch.manual_seed(0)
    model = Toy()
    optimizer = build_optimizer(model, TrainConfig(lr=1e-2))
    x, y = torch.randn(8, 3, 4, 4), torch.randint(0, 3, (8,))
    losses = []
    for _ in range(5):
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    with pytest.raises(ValueError, match="no trainable parameters"):
        build_optimizer(nn.Linear(2, 2).requires_grad_(False), TrainConfig())
