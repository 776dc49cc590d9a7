"""Structured pruning: one ratio per coupled group of channels (torch-pruning adapter), and per
self-attention module a share of whole heads (transformer encoders).

Groups that include an ``nn.Embedding`` are never offered: their channels are a transformer's
hidden width, the residual stream every layer shares. The query/key/value/output layers of a
self-attention module are pruned by head only, never channel by channel (a head's width is fixed
by the module's reshapes).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from tightfit.config import SpaceSpec
from tightfit.exceptions import CandidateError
from tightfit.kernels import _heads
from tightfit.kernels import _torch_pruning as adapter
from tightfit.kernels._base import Kernel, SurgeryContext, Unit
from tightfit.kernels._registry import register_kernel


@register_kernel
class StructuredPruning(Kernel):
    """Remove output channels of a coupled group (and the matching inputs downstream)."""

    name = "prune"
    knob = "prune_ratio"
    stage = "torch"
    order = 10

    def _ignored(self, ctx: SurgeryContext, attention: list[_heads.Attention]) -> tuple[str, ...]:
        """Layers torch-pruning leaves alone: the configured ones, the classifier, and every
        attention module's members (pruned by head)."""
        members = tuple(p for a in attention for p in a.members)
        return ctx.ignore + ((ctx.classifier,) if ctx.classifier else ()) + members

    @staticmethod
    def _prunable(found: list[_heads.Attention], ctx: SurgeryContext) -> list[_heads.Attention]:
        """The attention modules whose heads may be pruned (not in ``ctx.ignore``)."""
        return [a for a in found if a.path not in ctx.ignore]

    def units(self, model: nn.Module, ctx: SurgeryContext, space: SpaceSpec) -> list[Unit]:
        if not space.prune.enabled:
            return []
        units = []
        found = _heads.find_attention(model)
        for attention in self._prunable(found, ctx):
            head_choices: list[float] = []
            seen: set[int] = set()
            for r in space.prune.ratios:
                removed = _heads.heads_removed(r, attention.heads)
                if removed < attention.heads and removed not in seen:
                    seen.add(removed)
                    head_choices.append(r)
            if len(head_choices) > 1:
                info = {
                    "members": attention.members,
                    "heads": attention.heads,
                    "head_dim": attention.head_dim,
                }
                units.append(Unit(attention.path, self.knob, tuple(head_choices), info))
        skip = {p for p, m in model.named_modules() if isinstance(m, nn.Embedding)}
        skip |= {p for a in found for p in a.members}
        for group in adapter.coupled_groups(model, ctx.example_inputs, self._ignored(ctx, found)):
            if skip & set(group.members):
                continue  # a transformer's hidden width, or layers pruned by head only
            # a ratio is worth offering only if it leaves at least one round_to block
            choices = tuple(
                r for r in space.prune.ratios if group.channels * (1 - r) >= ctx.profile.round_to
            )
            if len(choices) > 1:
                units.append(
                    Unit(
                        group.root,
                        self.knob,
                        choices,
                        {"members": group.members, "channels": group.channels},
                    )
                )
        return units

    def apply(self, model: nn.Module, plan: dict[str, Any], ctx: SurgeryContext) -> dict[str, Any]:
        if not plan:
            return {}
        found = _heads.find_attention(model)
        paths = {a.path for a in found}
        heads = {p: r for p, r in plan.items() if p in paths}
        channels = {p: r for p, r in plan.items() if p not in heads}
        report: dict[str, Any] = {}
        try:
            if channels:
                report["kept_channels"] = adapter.prune_groups(
                    model,
                    ctx.example_inputs,
                    channels,
                    self._ignored(ctx, found),
                    ctx.profile.round_to,
                )
            if heads:
                report["kept_heads"] = _heads.prune_heads(model, heads)
        except Exception as e:  # torch-pruning raises many types on odd graphs
            raise CandidateError(f"pruning failed: {type(e).__name__}: {e}") from e
        return report

    def channel_importance(self, model: nn.Module, ctx: SurgeryContext) -> dict[str, list[float]]:
        """Per coupled group (by root path), the importance of each channel, on the scale the
        pruner ranks them by (so a global threshold can be drawn across groups)."""
        found = _heads.find_attention(model)
        out = adapter.channel_importance(model, ctx.example_inputs, self._ignored(ctx, found))
        for attention in self._prunable(found, ctx):  # one entry per head
            importance = _heads.head_importance(model, attention)
            out[attention.path] = (importance / importance.mean()).tolist()
        return out
