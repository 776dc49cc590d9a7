"""Depth: drop whole blocks of a decoder (ShortGPT-style), per block.

Off unless the space asks: ``space: {kernels: {depth: {enabled: true}}}``. A unit is one block
of a stack of transformer blocks (a ``ModuleList`` whose children hold an attention module
with a ``layer_idx``, as every Hugging Face decoder's do); its knob ``drop`` is False (kept, the
no-op) or True. A dropped block is taken out of its list; the blocks after it keep their module
paths (``model.layers.7`` stays ``model.layers.7``), so every other kernel's plan still names
the right modules and ONNX nodes; their ``layer_idx`` (the slot each fills in the KV cache) and
the config's layer count are renumbered, so the cache holds one entry per kept block.
Applied after pruning and low rank, which act on the blocks as discovered.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from tightfit.config import SpaceSpec
from tightfit.exceptions import CandidateError
from tightfit.kernels._base import Kernel, SurgeryContext, Unit
from tightfit.kernels._registry import register_kernel
from tightfit.spaces import DROP


def _attention_of(block: nn.Module) -> nn.Module | None:
    """The block's attention module: the one carrying a ``layer_idx`` (its cache slot)."""
    for m in block.modules():
        if m is not block and isinstance(getattr(m, "layer_idx", None), int):
            return m
    return None


def block_stacks(model: nn.Module) -> dict[str, nn.ModuleList]:
    """Every ``ModuleList`` of two or more transformer blocks, by path."""
    return {
        path: m
        for path, m in model.named_modules()
        if isinstance(m, nn.ModuleList)
        and len(m) >= 2
        and all(_attention_of(b) is not None for b in m)
    }


@register_kernel
class Depth(Kernel):
    """Drop whole decoder blocks."""

    name = "depth"
    knob = DROP
    stage = "torch"
    order = 25  # after pruning (10) and low rank (20), before the ONNX stage

    def units(self, model: nn.Module, ctx: SurgeryContext, space: SpaceSpec) -> list[Unit]:
        if not self.settings(space).get("enabled", False):
            return []
        units = []
        for path, stack in block_stacks(model).items():
            for key in stack._modules:
                block = f"{path}.{key}"
                if block not in ctx.ignore:
                    units.append(Unit(block, self.knob, (False, True), {"blocks": len(stack)}))
        return units

    def strongest(self, units: list[Unit]) -> dict[str, Any]:
        """Every block dropped but, where the units are a whole stack, its first: a stack
        without blocks is no model (probing every block alone instead costs an export each)."""
        plan = super().strongest(units)
        stacks: dict[str, list[Unit]] = {}
        for u in units:
            stacks.setdefault(u.path.rpartition(".")[0], []).append(u)
        for mine in stacks.values():
            if len(mine) == mine[0].info["blocks"]:
                plan[mine[0].path] = False
        return plan

    def apply(self, model: nn.Module, plan: dict[str, Any], ctx: SurgeryContext) -> dict[str, Any]:
        stacks = block_stacks(model)
        dropped: list[str] = []
        for path, drop in plan.items():
            if not drop:
                continue
            parent, _, key = path.rpartition(".")
            stack = stacks.get(parent)
            if stack is None or key not in stack._modules:
                raise CandidateError(f"depth: '{path}' is no block of a decoder stack")
            dropped.append(path)
        for path in dropped:
            parent, _, key = path.rpartition(".")
            del stacks[parent]._modules[key]  # the others keep their keys, hence their paths
        for parent, stack in stacks.items():
            if len(stack) == 0:
                raise CandidateError(f"depth: every block of '{parent}' dropped")
        if dropped:
            _renumber(model, stacks)
        return {"dropped": sorted(dropped), "kept": sum(len(s) for s in stacks.values())}


def _renumber(model: nn.Module, stacks: dict[str, nn.ModuleList]) -> None:
    """Each kept block's cache slot becomes its position; configs count the kept blocks."""
    for stack in stacks.values():
        kept = list(stack._modules)
        for slot, block in enumerate(stack):
            for m in block.modules():
                if isinstance(getattr(m, "layer_idx", None), int):
                    setattr(m, "layer_idx", slot)  # noqa: B010 - nn.Module typing
        seen: set[int] = set()  # a decoder and its LM head share one config
        for m in model.modules():
            config = getattr(m, "config", None)
            if config is None or getattr(config, "num_hidden_layers", None) is None:
                continue
            if id(config) in seen:
                continue
            seen.add(id(config))
            types = getattr(config, "layer_types", None)
            if isinstance(types, list) and len(types) == config.num_hidden_layers:
                config.layer_types = [types[int(k)] for k in kept if k.isdigit()]
            config.num_hidden_layers = len(stack)
