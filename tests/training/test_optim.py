import math

import pytest
import torch

from lmforge.config import TrainConfig
from lmforge.training.optim import build_optimizer, lr_at, param_groups


def test_warmup_then_cosine():
    cfg = TrainConfig(lr=1.0, warmup_steps=10, max_steps=110, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == pytest.approx(0.1)
    assert lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(60, cfg) == pytest.approx(0.55)
    assert lr_at(110, cfg) == pytest.approx(0.1)
    lrs = [lr_at(s, cfg) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_step_and_restarts_and_constant():
    cfg = TrainConfig(lr=1.0, schedule="step", step_size=5, gamma=0.5)
    assert [lr_at(s, cfg) for s in (0, 4, 5, 10)] == [1.0, 1.0, 0.5, 0.25]
    cfg = TrainConfig(lr=1.0, schedule="cosine_restarts", restart_period=10, min_lr_ratio=0.0)
    assert lr_at(0, cfg) == pytest.approx(1.0) and lr_at(10, cfg) == pytest.approx(1.0)
    assert lr_at(5, cfg) == pytest.approx(0.5)
    assert lr_at(123, TrainConfig(lr=0.3, schedule="constant")) == 0.3


@pytest.mark.parametrize("name, cls", [("adamw", torch.optim.AdamW), ("sgd", torch.optim.SGD), ("rmsprop", torch.optim.RMSprop)])
def test_optimizers_decay_only_matrices(name, cls):
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    opt = build_optimizer(model, TrainConfig(optimizer=name, weight_decay=0.1))
    assert isinstance(opt, cls)
    groups = param_groups(model, 0.1)
    assert [p.dim() for p in groups[0]["params"]] == [2] and groups[1]["weight_decay"] == 0.0
    loss = model(torch.ones(2, 4)).pow(2).sum()
    loss.backward()
    opt.step()
    assert all(math.isfinite(p.sum().item()) for p in model.parameters())
