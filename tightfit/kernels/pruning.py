"""Structured channel pruning, one ratio per coupled group (torch-pruning adapter)."""

from __future__ import annotations

from typing import Any

from torch import nn

from tightfit.config import SpaceSpec
from tightfit.exceptions import CandidateError
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

    def _ignored(self, ctx: SurgeryContext) -> tuple[str, ...]:
        return ctx.ignore + ((ctx.classifier,) if ctx.classifier else ())

    def units(self, model: nn.Module, ctx: SurgeryContext, space: SpaceSpec) -> list[Unit]:
        if not space.prune.enabled:
            return []
        units = []
        for group in adapter.coupled_groups(model, ctx.example_inputs, self._ignored(ctx)):
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
        try:
            kept = adapter.prune_groups(
                model, ctx.example_inputs, plan, self._ignored(ctx), ctx.profile.round_to
            )
        except Exception as e:  # torch-pruning raises many types on odd graphs
            raise CandidateError(f"pruning failed: {type(e).__name__}: {e}") from e
        return {"kept_channels": kept}

    def channel_importance(self, model: nn.Module, ctx: SurgeryContext) -> dict[str, list[float]]:
        """Per coupled group (by root path), the importance of each channel, on the scale the
        pruner ranks them by (so a global threshold can be drawn across groups)."""
        return adapter.channel_importance(model, ctx.example_inputs, self._ignored(ctx))
