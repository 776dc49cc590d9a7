"""Attention-head pruning for the attention layouts users bring.

A self-attention module is recognised by its projections and the attributes its reshapes read:

- ``bert``: ``query``/``key``/``value`` Linear children, the output projection the sibling
  ``output.dense``, and ``num_attention_heads`` / ``attention_head_size`` / ``all_head_size``
  (BERT, RoBERTa, ELECTRA, MiniLM, MobileViT, ...);
- ``proj``: ``q_proj``/``k_proj``/``v_proj`` and ``o_proj`` (or ``out_proj``) children, with
  ``head_dim`` (Llama, Qwen2, ViT, DeiT in transformers 5, ...); grouped-query attention
  (fewer key/value heads than query heads) prunes whole groups: a key/value head with the query
  heads that read it;
- ``lin``: ``q_lin``/``k_lin``/``v_lin`` and ``out_lin``, with ``n_heads`` /
  ``attention_head_size`` (DistilBERT);
- ``fused``: one ``qkv`` Linear (query, key and value stacked) and ``proj``, with
  ``num_heads`` / ``head_dim`` (timm's ViT and attention written by hand in that style).

Removing a head removes its rows of the query/key/value projections and its columns of the
output projection, and sets the module's head-count attributes (and ``all_head_size``) to what
is left, as torch-pruning's ViT recipe does; the head width never changes. A module that looks
like attention (it has query/key/value-style projections) but matches no layout, has no head
count to update, or keeps per-head parameters elsewhere (Swin's relative position bias) is
*refused*: :func:`refused_attention` says why, and its projections are left unpruned.

Written here rather than through torch-pruning: torch-pruning 1.6 couples query, key, value and
the output projection correctly, but with ``head_pruning_ratio_dict`` it removed no head on
``BertSelfAttention`` (transformers 5.23) in our tests, and it leaves the head-count attributes
to the caller anyway.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Layout:
    name: str
    q: str  # child names; for a fused layout, ``q`` is the one qkv projection
    k: str
    v: str
    out: tuple[str, ...]  # the output projection: candidate child names, or "../<path>"
    heads: tuple[str, ...]  # attributes that may hold the (query) head count
    head_dim: tuple[str, ...]  # attributes that may hold the head width
    fused: bool = False


LAYOUTS = (
    Layout("bert", "query", "key", "value", ("../output.dense",), ("num_attention_heads",),
           ("attention_head_size",)),
    Layout("proj", "q_proj", "k_proj", "v_proj", ("o_proj", "out_proj"),
           ("num_attention_heads", "num_heads", "n_heads"), ("head_dim", "attention_head_size")),
    Layout("lin", "q_lin", "k_lin", "v_lin", ("out_lin",), ("n_heads", "num_attention_heads"),
           ("attention_head_size", "head_dim")),
    Layout("fused", "qkv", "qkv", "qkv", ("proj", "out_proj", "o_proj"),
           ("num_heads", "num_attention_heads", "n_heads"), ("head_dim", "attention_head_size"),
           fused=True),
)  # fmt: skip

#: Child names that mark a module as attention (for refusals of layouts not recognised).
PROJECTION_NAMES = frozenset(
    {"query", "key", "value", "q_proj", "k_proj", "v_proj", "q_lin", "k_lin", "v_lin", "qkv"}
    | {"c_attn", "in_proj", "to_q", "to_k", "to_v", "Wqkv", "query_key_value"}
)
HEAD_COUNTS = tuple(dict.fromkeys(n for layout in LAYOUTS for n in layout.heads))
KV_HEADS = ("num_key_value_heads", "num_kv_heads")
WIDTHS = ("all_head_size",)  # attributes holding heads x head width, set after pruning
PER_HEAD_EXTRAS = ("relative_position_bias_table", "relative_position_bias", "head_scale")


@dataclass(frozen=True)
class Attention:
    path: str  # the self-attention module: the unit's name
    out: str  # the output projection reading its heads
    heads: int  # query heads
    head_dim: int
    layout: str = "bert"
    kv_heads: int = 0  # key/value heads; 0: as many as query heads
    projections: tuple[str, ...] = ()  # paths of q, k, v (one path if fused)

    @property
    def groups(self) -> int:
        """Prunable units: key/value heads, each with the query heads that read it."""
        return self.kv_heads or self.heads

    @property
    def members(self) -> tuple[str, ...]:
        return (*self.projections, self.out)


def _int_attr(module: nn.Module, names: tuple[str, ...]) -> tuple[str, int] | None:
    for name in names:
        value = getattr(module, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return name, value
    return None


def _join(path: str, child: str) -> str:
    return f"{path}.{child}" if path else child


def _match(
    path: str, module: nn.Module, layout: Layout, modules: dict[str, nn.Module]
) -> Attention | str | None:
    """The attention of ``module`` in ``layout``; a reason it is refused; None: not this layout."""
    names = {layout.q, layout.k, layout.v}
    if not all(isinstance(getattr(module, n, None), nn.Linear) for n in names):
        return None
    parent = path.rpartition(".")[0]
    out_path = None
    for name in layout.out:
        candidate = (
            (f"{parent}.{name[3:]}" if parent else name[3:])
            if name.startswith("../")
            else _join(path, name)
        )
        if isinstance(modules.get(candidate), nn.Linear):
            out_path = candidate
            break
    if out_path is None:
        return f"{layout.name}-style attention without its output projection ({layout.out})"
    heads = _int_attr(module, layout.heads)
    if heads is None:  # the count in the config only: the module's reshapes must not use it
        n_heads = getattr(getattr(module, "config", None), "num_attention_heads", None)
        if not isinstance(n_heads, int) or not hasattr(module, layout.head_dim[0]):
            return f"no head-count attribute ({' / '.join(layout.heads)}) to update after pruning"
    else:
        n_heads = heads[1]
    q, k, v = (getattr(module, n) for n in (layout.q, layout.k, layout.v))
    dim = _int_attr(module, layout.head_dim)
    width = (q.out_features // 3) if layout.fused else q.out_features
    head_dim = dim[1] if dim else width // n_heads
    if n_heads * head_dim != width or (layout.fused and q.out_features != 3 * width):
        return f"{n_heads} heads x {head_dim} does not match the query projection's {width}"
    out = modules[out_path]
    assert isinstance(out, nn.Linear)
    if out.in_features != width:
        return f"the output projection reads {out.in_features} features, not {width}"
    kv_heads = 0
    if not layout.fused and (k.out_features != width or v.out_features != width):
        if k.out_features != v.out_features or k.out_features % head_dim:
            return "key and value projections of different widths"
        kv_heads = k.out_features // head_dim
        if n_heads % kv_heads:
            return f"{n_heads} query heads do not divide into {kv_heads} key/value groups"
    extras = [
        n for n, _ in module.named_parameters() if n.rpartition(".")[2] in PER_HEAD_EXTRAS
    ] + [n for n, _ in module.named_modules() if n.rpartition(".")[2] in PER_HEAD_EXTRAS]
    if extras:
        return f"per-head parameters outside the projections ({extras[0]}) are not pruned"
    projections = tuple(dict.fromkeys(_join(path, n) for n in (layout.q, layout.k, layout.v)))
    return Attention(path, out_path, n_heads, head_dim, layout.name, kv_heads, projections)


@dataclass(frozen=True)
class Scan:
    """The attention modules of a model: those whose heads prune, and those refused."""

    found: list[Attention]
    refused: dict[str, str]  # path -> reason
    refused_members: tuple[str, ...]  # the Linear layers of the refused modules

    @property
    def members(self) -> tuple[str, ...]:
        """Every layer whose width attention fixes: pruned by head, or not at all."""
        return (*(p for a in self.found for p in a.members), *self.refused_members)


def scan(model: nn.Module) -> Scan:
    """Every module of ``model`` that looks like attention, matched against :data:`LAYOUTS`."""
    modules = dict(model.named_modules())
    found: list[Attention] = []
    refused: dict[str, str] = {}
    for path, module in modules.items():
        children = {n for n, _ in module.named_children()}
        if not children & PROJECTION_NAMES:
            continue
        reasons = []
        for layout in LAYOUTS:
            match = _match(path, module, layout, modules)
            if isinstance(match, Attention):
                found.append(match)
                break
            if match is not None:
                reasons.append(match)
        else:
            if len(children & PROJECTION_NAMES) >= 2 or children & {"qkv", "c_attn", "in_proj"}:
                kinds = sorted(children & PROJECTION_NAMES)
                refused[path] = (
                    reasons[0]
                    if reasons
                    else (
                        f"attention layout not recognised (projections {kinds}; supported: "
                        f"{', '.join(layout.name for layout in LAYOUTS)})"
                    )
                )
    refused_members = tuple(
        _join(path, n)
        for path in refused
        for n, m in modules[path].named_children()
        if isinstance(m, nn.Linear)
    )
    return Scan(found, refused, refused_members)


def find_attention(model: nn.Module) -> list[Attention]:
    """Every self-attention module of ``model`` whose heads can be pruned."""
    return scan(model).found


def refused_attention(model: nn.Module) -> dict[str, str]:
    """Modules that look like attention but whose heads are not pruned, with the reason."""
    return scan(model).refused


def heads_removed(ratio: float, heads: int) -> int:
    """How many of ``heads`` a prune ratio removes (rounded down)."""
    return int(ratio * heads + 1e-9)


def _query_heads(attention: Attention, group: int) -> list[int]:
    per = attention.heads // attention.groups
    return list(range(group * per, (group + 1) * per))


def _rows(heads: list[int], d: int, offset: int = 0) -> list[int]:
    return [offset + h * d + i for h in heads for i in range(d)]


def _projections(model: nn.Module, attention: Attention) -> list[nn.Linear]:
    return [_linear(model, p) for p in attention.projections]


def head_importance(model: nn.Module, attention: Attention) -> torch.Tensor:
    """L2 norm of each head group's weights: its query/key/value rows and output columns."""
    d, width = attention.head_dim, attention.heads * attention.head_dim
    total = torch.zeros(attention.groups, dtype=torch.float64)
    out = _linear(model, attention.out)
    projections = _projections(model, attention)
    with torch.no_grad():
        for g in range(attention.groups):
            q_rows = _rows(_query_heads(attention, g), d)
            kv_rows = _rows([g], d) if attention.kv_heads else q_rows
            if attention.layout == "fused":
                parts = [(projections[0], [r + o for r in q_rows]) for o in (0, width, 2 * width)]
            else:
                q, k, v = projections
                parts = [(q, q_rows), (k, kv_rows), (v, kv_rows)]
            for layer, rows in parts:
                total[g] += layer.weight.detach().double()[rows].pow(2).sum()
                if layer.bias is not None:
                    total[g] += layer.bias.detach().double()[rows].pow(2).sum()
            total[g] += out.weight.detach().double()[:, q_rows].pow(2).sum()
    return total.sqrt()


def _linear(model: nn.Module, path: str) -> nn.Linear:
    layer = model.get_submodule(path)
    assert isinstance(layer, nn.Linear)
    return layer


def _keep_rows(layer: nn.Linear, rows: list[int]) -> None:
    index = torch.tensor(rows, dtype=torch.long)
    layer.weight = nn.Parameter(layer.weight.detach()[index].clone())
    if layer.bias is not None:
        layer.bias = nn.Parameter(layer.bias.detach()[index].clone())
    layer.out_features = len(rows)


def _keep_columns(layer: nn.Linear, columns: list[int]) -> None:
    index = torch.tensor(columns, dtype=torch.long)
    layer.weight = nn.Parameter(layer.weight.detach()[:, index].clone())
    layer.in_features = len(columns)


def prune_heads(model: nn.Module, plan: dict[str, float]) -> dict[str, list[int]]:
    """Remove the least important head groups of each attention module in ``plan`` (path ->
    ratio of its key/value groups; plain multi-head attention: of its heads), in place; returns
    the query heads each one keeps. At least one group is kept."""
    by_path = {a.path: a for a in find_attention(model)}
    missing = sorted(set(plan) - set(by_path))
    if missing:
        raise KeyError(f"no prunable self-attention module at path(s) {missing}")
    kept: dict[str, list[int]] = {}
    for path, ratio in plan.items():
        a = by_path[path]
        n_keep = max(1, a.groups - heads_removed(ratio, a.groups))
        importance = head_importance(model, a)
        groups = sorted(torch.argsort(importance, descending=True)[:n_keep].tolist())
        heads = [h for g in groups for h in _query_heads(a, g)]
        d, width = a.head_dim, a.heads * a.head_dim
        q_rows = _rows(heads, d)
        module = model.get_submodule(path)
        if a.layout == "fused":
            (qkv,) = _projections(model, a)
            _keep_rows(qkv, [r + o for o in (0, width, 2 * width) for r in q_rows])
        else:
            q, k, v = _projections(model, a)
            kv_rows = _rows(groups, d) if a.kv_heads else q_rows
            _keep_rows(q, q_rows)
            _keep_rows(k, kv_rows)
            _keep_rows(v, kv_rows)
        _keep_columns(_linear(model, a.out), q_rows)
        # the head counts and width the module's reshapes read, set to what is left
        for name, value in list(vars(module).items()):
            if isinstance(value, bool) or not isinstance(value, int):
                continue
            if name in KV_HEADS and a.kv_heads and value == a.kv_heads:
                setattr(module, name, len(groups))
            elif name in WIDTHS and value == width:
                setattr(module, name, len(heads) * d)
            elif name in HEAD_COUNTS and value == a.heads:
                setattr(module, name, len(heads))
        kept[path] = heads
    return kept
