"""Training and caching shared by the examples that train their network once."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)


def fit(
    model: nn.Module,
    xs: torch.Tensor,
    ys: torch.Tensor,
    epochs: int,
    batch: int,
    generator: torch.Generator,
    lr: float = 3e-3,
) -> nn.Module:
    """Cross-entropy training with AdamW and a one-cycle schedule; returns ``model`` in eval
    mode. Deterministic for a given generator (and torch seed for the weights' init)."""
    steps = epochs * ((len(xs) + batch - 1) // batch)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(xs), generator=generator)
        for i in range(0, len(xs), batch):
            idx = order[i : i + batch]
            loss = F.cross_entropy(model(xs[idx]), ys[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


def trained_once(
    model: nn.Module, cache: Path | None, train: Callable[[], nn.Module], what: str
) -> nn.Module:
    """``model`` with the weights cached at ``cache``, else ``train()``'s (then cached)."""
    if cache is not None and cache.exists():
        model.load_state_dict(torch.load(cache, weights_only=True))
        return model.eval()
    log.info("training %s once", what)
    trained = train()
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp")
        torch.save(trained.state_dict(), tmp)
        tmp.replace(cache)
    return trained
