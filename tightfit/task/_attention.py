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

Where the model's rotary embedding is the plain half-rotation of the whole head with a fixed
table (Llama's ``default``, ``linear`` and ``llama3`` rope types), it moves into the operator
too (``do_rotary``, with the cos and sin tables of every position as constants), as the builder
writes it: the model's own ``apply_rotary_pos_emb`` is bypassed while exporting, and the
operator rotates the new query and key at their positions in the cache. That removes the
Transposes around the rotation and the ``RotaryEmbedding`` nodes of every layer.
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


@dataclass(frozen=True)
class _Rotary:
    """A rotary embedding the operator applies: cos and sin per position, half a head wide."""

    cos: torch.Tensor
    sin: torch.Tensor


_ROTARY: contextvars.ContextVar[_Rotary | None] = contextvars.ContextVar(
    "tightfit_gqa_rotary", default=None
)
#: rope types whose table depends on the position alone (not on the sequence's length)
_FIXED_ROPE = ("default", "linear", "llama3")


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
    rotary, modules = _rotary_of(model)
    originals = {m: m.apply_rotary_pos_emb for m in modules}
    token = _ROTARY.set(rotary)
    try:
        for c in configs.values():
            c._attn_implementation = NAME
        for m in modules:  # the operator rotates: the model's rotation is skipped
            m.apply_rotary_pos_emb = _not_rotated
        yield
    finally:
        for key, c in configs.items():
            c._attn_implementation = saved[key]
        for m, function in originals.items():
            m.apply_rotary_pos_emb = function
        _ROTARY.reset(token)


def _rotary_of(model: nn.Module) -> tuple[_Rotary | None, list[Any]]:
    """The rotary tables the operator takes for ``model`` and the Python modules whose
    ``apply_rotary_pos_emb`` its attention calls; (None, []) where the rotation stays the
    model's: no ``rotary_emb`` with a fixed table, a rotation narrower than the head or not by
    halves, a head size that is no multiple of 16 (the operator's), no known maximum
    position."""
    import sys

    attentions = [m for m in model.modules() if hasattr(m, "layer_idx") and hasattr(m, "head_dim")]
    embeddings = [
        m
        for name, m in model.named_modules()
        if name.endswith("rotary_emb") and hasattr(m, "inv_freq")
    ]
    config = getattr(model, "config", None)
    positions = getattr(config, "max_position_embeddings", None)
    if not attentions or len(embeddings) != 1 or not isinstance(positions, int):
        return None, []
    if getattr(embeddings[0], "rope_type", "default") not in _FIXED_ROPE:
        return None, []
    modules = {sys.modules[type(m).__module__] for m in attentions}
    if not all(hasattr(m, "apply_rotary_pos_emb") for m in modules):
        return None, []
    dim = int(attentions[0].head_dim)  # type: ignore[arg-type]
    if dim % 16:  # ONNX Runtime's operator rotates heads of a multiple of 16 only
        return None, []
    try:
        with torch.no_grad():
            cos, sin = embeddings[0](torch.zeros(1), torch.arange(positions)[None])
    except Exception:  # noqa: BLE001 - a rotary embedding of another signature
        return None, []
    cos, sin = cos[0].float(), sin[0].float()
    half = dim // 2
    if cos.shape != (positions, dim) or not all(
        torch.equal(t[:, :half], t[:, half:]) for t in (cos, sin)
    ):
        return None, []
    return _Rotary(cos[:, :half].contiguous(), sin[:, :half].contiguous()), list(modules)


def _not_rotated(query: torch.Tensor, key: torch.Tensor, *args: Any, **kwargs: Any) -> tuple:
    return query, key


def _rotated(x: torch.Tensor, rotary: _Rotary, start: int) -> torch.Tensor:
    """``x`` (batch, heads, new, head dim) rotated at positions ``start`` on, as the model's
    ``apply_rotary_pos_emb`` rotates it (halves)."""
    new = x.shape[2]
    cos = torch.cat([rotary.cos[start : start + new]] * 2, dim=-1).to(x.dtype)
    sin = torch.cat([rotary.sin[start : start + new]] * 2, dim=-1).to(x.dtype)
    half = x.shape[-1] // 2
    turned = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + turned * sin


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
    attention output (batch, new, heads, head dim), or while exporting the operator's (batch,
    new, heads * head dim), which the model's own reshape to (batch, new, -1) takes as well
    (one Reshape per layer, not two), and records the layer's present key and value (past and
    new) on the step."""
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
    rotary = _ROTARY.get()
    if torch.onnx.is_in_onnx_export():
        total = past_key.shape[2] + new
        attrs: dict[str, Any] = {"num_heads": heads, "kv_num_heads": kv_heads, "scale": scale}
        tables: tuple[torch.Tensor, ...] = ()
        if rotary is not None:  # the query and key come unrotated: the operator rotates
            attrs.update(do_rotary=1, rotary_interleaved=0)
            tables = (rotary.cos, rotary.sin)
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
                *tables,
            ),
            attrs,
            dtypes=(query.dtype, key.dtype, value.dtype),
            shapes=(
                (batch, new, heads * dim),
                (batch, kv_heads, total, dim),
                (batch, kv_heads, total, dim),
            ),
            version=1,
        )
    else:
        if rotary is not None:
            start = past_key.shape[2]
            query, key = _rotated(query, rotary, start), _rotated(key, rotary, start)
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
