"""Attention-head pruning for BERT-style self-attention (the Hugging Face layout).

A self-attention module here has ``query``, ``key`` and ``value`` Linear layers and the
attributes ``num_attention_heads``, ``attention_head_size`` and ``all_head_size``
(``BertSelfAttention`` and the models built like it: RoBERTa, ELECTRA, MiniLM, ...); the
projection that reads its heads is the sibling ``output.dense``. Removing a head removes its
rows of query/key/value, its columns of the output projection, and updates the attributes so
the module's reshapes still hold.

Written here rather than through torch-pruning: torch-pruning 1.6.1 couples query, key, value
and the output projection into one group correctly, but with ``head_pruning_ratio_dict`` it
removed no head on ``BertSelfAttention`` (transformers 5.23) in our tests, and it leaves the
head-count attributes to the caller anyway.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

QKV = ("query", "key", "value")


@dataclass(frozen=True)
class Attention:
    path: str  # the self-attention module: the unit's name
    out: str  # the output projection reading its heads
    heads: int
    head_dim: int

    @property
    def members(self) -> tuple[str, ...]:
        return (*(f"{self.path}.{n}" for n in QKV), self.out)


def find_attention(model: nn.Module) -> list[Attention]:
    """Every self-attention module of ``model`` whose heads can be pruned."""
    modules = dict(model.named_modules())
    found = []
    for path, module in modules.items():
        if not all(isinstance(getattr(module, n, None), nn.Linear) for n in QKV):
            continue
        heads = getattr(module, "num_attention_heads", None)
        size = getattr(module, "attention_head_size", None)
        if not isinstance(heads, int) or not isinstance(size, int):
            continue
        parent = path.rpartition(".")[0]
        out_path = f"{parent}.output.dense" if parent else "output.dense"
        out = modules.get(out_path)
        width = heads * size
        if not isinstance(out, nn.Linear) or out.in_features != width:
            continue
        if any(getattr(module, n).out_features != width for n in QKV):
            continue
        found.append(Attention(path, out_path, heads, size))
    return found


def heads_removed(ratio: float, heads: int) -> int:
    """How many of ``heads`` a prune ratio removes (rounded down)."""
    return int(ratio * heads + 1e-9)


def head_importance(model: nn.Module, attention: Attention) -> torch.Tensor:
    """L2 norm of each head's weights over query/key/value rows and output columns."""
    module = model.get_submodule(attention.path)
    out = _linear(model, attention.out)
    d = attention.head_dim
    total = torch.zeros(attention.heads, dtype=torch.float64)
    with torch.no_grad():
        for name in QKV:
            layer = getattr(module, name)
            total += layer.weight.double().reshape(attention.heads, d, -1).pow(2).sum(dim=(1, 2))
            if layer.bias is not None:
                total += layer.bias.double().reshape(attention.heads, d).pow(2).sum(dim=1)
        total += out.weight.double().reshape(-1, attention.heads, d).pow(2).sum((0, 2))
    return total.sqrt()


def _linear(model: nn.Module, path: str) -> nn.Linear:
    layer = model.get_submodule(path)
    assert isinstance(layer, nn.Linear)
    return layer


def _keep_rows(layer: nn.Linear, rows: torch.Tensor) -> None:
    layer.weight = nn.Parameter(layer.weight.detach()[rows].clone())
    if layer.bias is not None:
        layer.bias = nn.Parameter(layer.bias.detach()[rows].clone())
    layer.out_features = len(rows)


def _keep_columns(layer: nn.Linear, columns: torch.Tensor) -> None:
    layer.weight = nn.Parameter(layer.weight.detach()[:, columns].clone())
    layer.in_features = len(columns)


def prune_heads(model: nn.Module, plan: dict[str, float]) -> dict[str, list[int]]:
    """Remove the least important heads of each attention module in ``plan`` (path -> ratio),
    in place; returns the indices of the heads each one keeps. At least one head is kept."""
    by_path = {a.path: a for a in find_attention(model)}
    missing = sorted(set(plan) - set(by_path))
    if missing:
        raise KeyError(f"no prunable self-attention module at path(s) {missing}")
    kept: dict[str, list[int]] = {}
    for path, ratio in plan.items():
        attention = by_path[path]
        n_keep = max(1, attention.heads - heads_removed(ratio, attention.heads))
        importance = head_importance(model, attention)
        keep = sorted(torch.argsort(importance, descending=True)[:n_keep].tolist())
        d = attention.head_dim
        rows = torch.tensor([h * d + i for h in keep for i in range(d)], dtype=torch.long)
        module = model.get_submodule(path)
        for name in QKV:
            _keep_rows(getattr(module, name), rows)
        _keep_columns(_linear(model, attention.out), rows)
        setattr(module, "num_attention_heads", n_keep)  # noqa: B010  (plain attributes)
        setattr(module, "all_head_size", n_keep * d)  # noqa: B010
        kept[path] = keep
    return kept
