"""Structured pruning: one ratio per coupled group of channels (torch-pruning adapter), and per
self-attention module a share of whole heads (transformer encoders).

Groups that include an ``nn.Embedding`` are never offered: their channels are a transformer's
hidden width, the residual stream every layer shares. The query/key/value/output layers of a
self-attention module are pruned by head only, never channel by channel (a head's width is fixed
by the module's reshapes).
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch
from torch import nn

from tightfit.config import SpaceSpec
from tightfit.exceptions import CandidateError
from tightfit.kernels import _heads
from tightfit.kernels import _torch_pruning as adapter
from tightfit.kernels._base import Kernel, Refusal, SurgeryContext, Unit
from tightfit.kernels._registry import register_kernel

ENERGY_BATCH = 32
_ENERGY_CACHE: dict[str, dict[str, torch.Tensor]] = {}  # by fingerprint; the last few only
_ENERGY_CACHE_SIZE = 2


def _fingerprint(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> str:
    """A digest of ``model``'s state (names and bytes) and of ``inputs``."""
    digest = hashlib.blake2b(digest_size=16)
    tensors = [*model.state_dict().items(), *((str(i), x) for i, x in enumerate(inputs))]
    for name, t in tensors:
        digest.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        digest.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def cached_input_energy(
    model: nn.Module, inputs: tuple[torch.Tensor, ...]
) -> dict[str, torch.Tensor]:
    """:func:`input_energy`, computed once per (model state, inputs) in a process: every trial
    prunes a fresh copy of the same uncompressed model, so its statistics do not change
    (EfficientNet-Lite0, 128 images: about 20 s on one thread)."""
    key = _fingerprint(model, inputs)
    if key not in _ENERGY_CACHE:
        while len(_ENERGY_CACHE) >= _ENERGY_CACHE_SIZE:
            _ENERGY_CACHE.pop(next(iter(_ENERGY_CACHE)))
        _ENERGY_CACHE[key] = input_energy(model, inputs)
    return _ENERGY_CACHE[key]


def input_energy(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
    """The mean square of every input channel of each Conv without groups and each Linear of
    ``model``, over ``inputs`` (by module path, float64).

    One forward pass in batches of :data:`ENERGY_BATCH`, on one thread, so that every process
    computes the same sums and ranks channels the same (export replays the trial's pruning).
    """
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}

    def record(path: str):  # type: ignore[no-untyped-def]
        def hook(layer: nn.Module, args: tuple) -> None:
            x = args[0].detach()
            x = x.movedim(1, -1) if isinstance(layer, nn.modules.conv._ConvNd) else x
            x = x.reshape(-1, x.shape[-1])
            sums[path] = sums.get(path, 0) + x.double().pow(2).sum(0)
            counts[path] = counts.get(path, 0) + len(x)

        return hook

    handles = [
        m.register_forward_pre_hook(record(p))
        for p, m in model.named_modules()
        if isinstance(m, nn.Linear)
        or (
            isinstance(m, nn.modules.conv._ConvNd)
            and m.groups == 1
            and not getattr(m, "transposed", False)
        )
    ]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            for start in range(0, len(inputs[0]), ENERGY_BATCH):
                model(*(x[start : start + ENERGY_BATCH] for x in inputs))
    finally:
        for h in handles:
            h.remove()
        torch.set_num_threads(threads)
    return {p: sums[p] / counts[p] for p in sums}


@register_kernel
class StructuredPruning(Kernel):
    """Remove output channels of a coupled group (and the matching inputs downstream)."""

    name = "prune"
    knob = "prune_ratio"
    stage = "torch"
    order = 10

    def _ignored(self, ctx: SurgeryContext, attention: _heads.Scan) -> tuple[str, ...]:
        """Layers torch-pruning leaves alone: the configured ones, the classifier, and the
        layers of every attention module (pruned by head, or, where its heads are refused, not
        at all: its reshapes fix the width)."""
        classifier = (ctx.classifier,) if ctx.classifier else ()
        return ctx.ignore + ctx.prune_ignore + classifier + attention.members

    @staticmethod
    def _prunable(found: list[_heads.Attention], ctx: SurgeryContext) -> list[_heads.Attention]:
        """The attention modules whose heads may be pruned (in neither ignore list)."""
        return [a for a in found if a.path not in ctx.ignore + ctx.prune_ignore]

    def units(self, model: nn.Module, ctx: SurgeryContext, space: SpaceSpec) -> list[Unit]:
        if not space.prune.enabled:
            return []
        units = []
        attention_scan = _heads.scan(model)
        for attention in self._prunable(attention_scan.found, ctx):
            head_choices: list[float] = []
            seen: set[int] = set()
            for r in space.prune.ratios:
                removed = _heads.heads_removed(r, attention.groups)
                if removed < attention.groups and removed not in seen:
                    seen.add(removed)
                    head_choices.append(r)
            if len(head_choices) > 1:
                info = {
                    "members": attention.members,
                    "heads": attention.heads,
                    "head_dim": attention.head_dim,
                    "layout": attention.layout,
                }
                if attention.kv_heads:
                    info["kv_heads"] = attention.kv_heads
                units.append(Unit(attention.path, self.knob, tuple(head_choices), info))
        skip = {p for p, m in model.named_modules() if isinstance(m, nn.Embedding)}
        skip |= set(attention_scan.members)
        for group in adapter.coupled_groups(
            model, ctx.example_inputs, self._ignored(ctx, attention_scan)
        ):
            if skip & set(group.members):
                continue  # a transformer's hidden width, or layers pruned by head or not at all
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

    def refusals(self, model: nn.Module, ctx: SurgeryContext, space: SpaceSpec) -> list[Refusal]:
        if not space.prune.enabled:
            return []
        return [
            Refusal(path, self.knob, f"heads not pruned: {reason}")
            for path, reason in _heads.refused_attention(model).items()
            if path not in ctx.ignore + ctx.prune_ignore
        ]

    def apply(self, model: nn.Module, plan: dict[str, Any], ctx: SurgeryContext) -> dict[str, Any]:
        if not plan:
            return {}
        attention_scan = _heads.scan(model)
        paths = {a.path for a in attention_scan.found}
        heads = {p: r for p, r in plan.items() if p in paths}
        channels = {p: r for p, r in plan.items() if p not in heads}
        report: dict[str, Any] = {}
        try:
            if channels:
                energy = self._energy(model, ctx)
                report["kept_channels"], by_magnitude = adapter.prune_groups(
                    model,
                    ctx.example_inputs,
                    channels,
                    self._ignored(ctx, attention_scan),
                    ctx.profile.round_to,
                    energy,
                )
                report["importance"] = ctx.prune_importance
                if by_magnitude:  # no Conv/Linear consumes these groups' channels
                    report["ranked_by_magnitude"] = by_magnitude
            if heads:
                report["kept_heads"] = _heads.prune_heads(model, heads)
        except Exception as e:  # torch-pruning raises many types on odd graphs
            raise CandidateError(f"pruning failed: {type(e).__name__}: {e}") from e
        return report

    @staticmethod
    def _energy(model: nn.Module, ctx: SurgeryContext) -> dict[str, torch.Tensor] | None:
        """Input-channel energy for ``prune_importance: activation``; None for magnitude."""
        if ctx.prune_importance != "activation":
            return None
        was_training = model.training
        model.eval()
        try:
            return cached_input_energy(model, ctx.calibration_tensors())
        finally:
            model.train(was_training)

    def channel_importance(self, model: nn.Module, ctx: SurgeryContext) -> dict[str, list[float]]:
        """Per coupled group (by root path), the importance of each channel, on the scale the
        pruner ranks them by (so a global threshold can be drawn across groups)."""
        attention_scan = _heads.scan(model)
        out = adapter.channel_importance(
            model, ctx.example_inputs, self._ignored(ctx, attention_scan), self._energy(model, ctx)
        )
        for attention in self._prunable(attention_scan.found, ctx):  # one entry per head
            importance = _heads.head_importance(model, attention)
            out[attention.path] = (importance / importance.mean()).tolist()
        return out
