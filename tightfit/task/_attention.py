"""A causal LM's attention exported as ONNX Runtime's ``GroupQueryAttention``.

As exported, a Llama-style attention step is a dozen small operators around two MatMuls: the
cache's Concat, ``repeat_kv``'s Expand and Reshape of the whole cache (once per query head
group), Transposes, the causal mask. Decoding one token on a CPU they cost as much as the
projections do: on SmolLM2-135M's int4 graph, 6.1 ms of Concat, Expand, Unsqueeze, Reshape
and Transpose per token beside 9.6 ms of MatMulNBits. onnxruntime-genai's builder writes one
``com.microsoft::GroupQueryAttention`` per layer instead, which takes the past key and value,
appends the new ones and attends causally with the kv heads shared, without the copies.

While :func:`group_query_attention` is entered, a transformers model's attention is exactly
that: a registered attention function (``transformers.AttentionInterface``) that, under
``torch.onnx.export``, emits the operator (``torch.onnx.ops.symbolic_multi_out``) and, run
eagerly, computes what it computes. The cache's concatenation moves into the operator: a
generation step (``HuggingFaceModel.generation_step``) hands each layer's new key and value to
attention unconcatenated (:func:`step_cache`) and returns the operator's present key and value.
Rotary embeddings stay outside (the graph's own, fused separately).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

#: the name the attention function is registered under with transformers
NAME = "tightfit_group_query_attention"
#: the ONNX operator it exports as
OP = "GroupQueryAttention"


@dataclass
class _Step:
    """One generation step's cache: each layer's past (in) and present (out) key and value."""

    past: Sequence[torch.Tensor]
    present: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)


_STEP: contextvars.ContextVar[_Step | None] = contextvars.ContextVar("tightfit_gqa", default=None)


def unsupported(model: nn.Module) -> str | None:
    """Why ``model``'s attention cannot be one ``GroupQueryAttention`` per layer, or None.

    The operator attends causally over the whole cache with query heads shared evenly among
    kv heads, and nothing else: a sliding window, soft-capped logits or attention that is not
    causal has no place in it."""
    attentions = [
        m for m in model.modules() if hasattr(m, "layer_idx") and hasattr(m, "num_key_value_groups")
    ]
    if not attentions:
        return "no Llama-style attention module (with layer_idx and num_key_value_groups)"
    for m in attentions:
        config = getattr(m, "config", None)
        if getattr(m, "is_causal", True) is not True:
            return f"{type(m).__name__} is not causal"
        for name in ("sliding_window", "attn_logit_softcapping"):
            if getattr(m, name, None) is not None or getattr(config, name, None) is not None:
                return f"{type(m).__name__} has {name}, which GroupQueryAttention does not take"
        if getattr(config, "_attn_implementation", None) is None:
            return f"{type(m).__name__} does not dispatch its attention through transformers"
    return None


@contextlib.contextmanager
def group_query_attention(model: nn.Module) -> Iterator[None]:
    """While entered, ``model``'s attention modules call :func:`_attention` (check
    :func:`unsupported` first)."""
    from transformers import AttentionInterface

    AttentionInterface.register(NAME, _attention)
    configs = {
        id(c): c
        for m in model.modules()
        if (c := getattr(m, "config", None)) is not None and hasattr(c, "_attn_implementation")
    }
    saved = {key: c._attn_implementation for key, c in configs.items()}
    try:
        for c in configs.values():
            c._attn_implementation = NAME
        yield
    finally:
        for key, c in configs.items():
            c._attn_implementation = saved[key]


def active(model: nn.Module) -> bool:
    """Whether ``model`` runs under :func:`group_query_attention`."""
    config = getattr(model, "config", None)
    return getattr(config, "_attn_implementation", None) == NAME


@contextlib.contextmanager
def step_cache(cache: Any, past: Sequence[torch.Tensor]) -> Iterator[_Step]:
    """One generation step through ``cache`` (a transformers cache filled with ``past``, each
    layer's key and value in turn): its layers give attention the new key and value as they
    are (the operator appends them), and the step's ``present`` is filled by attention."""
    for layer in cache.layers:
        layer.update = _unchanged
    step = _Step(past)
    token = _STEP.set(step)
    try:
        yield step
    finally:
        _STEP.reset(token)


def _unchanged(key: torch.Tensor, value: torch.Tensor, *args: Any, **kwargs: Any) -> tuple:
    return key, value


def _attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' attention interface: ``query`` (batch, heads, new, head dim), ``key`` and
    ``value`` (batch, kv heads, new, head dim), this step's new tokens only; returns the
    attention output (batch, new, heads, head dim) and records the layer's present key and
    value (past and new) on the step."""
    step = _STEP.get()
    if step is None:
        raise RuntimeError(
            f"the attention implementation '{NAME}' runs inside a generation step only "
            "(HuggingFaceModel.generation_step)"
        )
    layer = int(module.layer_idx)  # type: ignore[arg-type]
    past_key, past_value = step.past[2 * layer], step.past[2 * layer + 1]
    batch, heads, new, dim = query.shape
    kv_heads = key.shape[1]
    scale = float(scaling if scaling is not None else dim**-0.5)
    if torch.onnx.is_in_onnx_export():
        total = past_key.shape[2] + new
        out, present_key, present_value = torch.onnx.ops.symbolic_multi_out(
            f"com.microsoft::{OP}",
            (
                _bsh(query),
                _bsh(key),
                _bsh(value),
                past_key,
                past_value,
                # seqlens_k: each row's total length less one (no padding inside a batch)
                torch.full((batch,), total - 1, dtype=torch.int32),
                torch.full((), total, dtype=torch.int32),  # total_sequence_length
            ),
            {"num_heads": heads, "kv_num_heads": kv_heads, "scale": scale},
            dtypes=(query.dtype, key.dtype, value.dtype),
            shapes=(
                (batch, new, heads * dim),
                (batch, kv_heads, total, dim),
                (batch, kv_heads, total, dim),
            ),
            version=1,
        )
        out = out.view(batch, new, heads, dim)
    else:
        out, present_key, present_value = _reference(query, key, value, past_key, past_value, scale)
    step.present[layer] = (present_key, present_value)
    return out, None


def _bsh(x: torch.Tensor) -> torch.Tensor:
    """(batch, heads, seq, dim) as GroupQueryAttention takes it: (batch, seq, heads * dim)."""
    batch, heads, seq, dim = x.shape
    return x.transpose(1, 2).reshape(batch, seq, heads * dim)


def _reference(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    past_key: torch.Tensor,
    past_value: torch.Tensor,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """What the operator computes, in torch: the cache appended, then causal attention of the
    new tokens (the last ``new`` positions) with each kv head shared by its query heads."""
    present_key = torch.cat([past_key, key], dim=2)
    present_value = torch.cat([past_value, value], dim=2)
    groups = query.shape[1] // key.shape[1]
    past, new = past_key.shape[2], query.shape[2]
    mask = torch.ones(new, past + new, dtype=torch.bool, device=query.device).tril(diagonal=past)
    out = torch.nn.functional.scaled_dot_product_attention(
        query,
        present_key.repeat_interleave(groups, dim=1),
        present_value.repeat_interleave(groups, dim=1),
        attn_mask=mask,
        scale=scale,
    )
    return out.transpose(1, 2), present_key, present_value
