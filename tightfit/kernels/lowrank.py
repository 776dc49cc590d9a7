"""Low-rank factorization of Linear and Conv layers by (activation-aware) truncated SVD.

Linear(in, out) becomes Linear(in, r, bias=False) -> Linear(r, out); Conv(in, out, k x k) becomes
Conv(in, r, k x k, same stride/padding/dilation, no bias) -> Conv(r, out, 1 x 1). Ranks are
offered only below the break-even rank, where the factored layer has fewer MACs than the dense
one (research/surgery-and-latency.md A2.4), and are given as fractions of it so that a layer
shrunk by pruning first still gets a rank that pays.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from tightfit.config import SpaceSpec
from tightfit.exceptions import CandidateError
from tightfit.kernels._base import Kernel, SurgeryContext, Unit
from tightfit.kernels._hooks import run_watched
from tightfit.kernels._registry import register_kernel

#: ASVD's default exponent for the per-input-channel activation scale.
ACTIVATION_ALPHA = 0.5


def break_even_rank(layer: nn.Module) -> float:
    """The rank at which the factored layer costs as many MACs as the dense one."""
    if isinstance(layer, nn.Linear):
        n_in, n_out = layer.in_features, layer.out_features
        return n_in * n_out / (n_in + n_out)
    assert isinstance(layer, nn.Conv2d)
    k = layer.kernel_size[0] * layer.kernel_size[1]
    return layer.in_channels * layer.out_channels * k / (layer.in_channels * k + layer.out_channels)


def is_factorizable(layer: nn.Module) -> bool:
    if isinstance(layer, nn.Linear):
        return True
    return isinstance(layer, nn.Conv2d) and layer.groups == 1 and layer.padding_mode == "zeros"


def resolve_rank(layer: nn.Module, fraction: float, round_to: int, min_rank: int) -> int | None:
    """The rank for ``fraction`` of the break-even, rounded down to ``round_to``; None if no gain."""
    limit = break_even_rank(layer)
    rank = int(limit * fraction) // round_to * round_to
    rank = max(rank, min_rank)
    return rank if rank < limit else None


def svd_factors(
    weight: torch.Tensor, rank: int, in_scale: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``weight`` (out, in) ~= second @ first with ``first`` (rank, in), ``second`` (out, rank).

    With ``in_scale`` (one positive number per input column), the SVD is taken of
    ``weight @ diag(in_scale)`` and unscaled afterwards, so the truncation error is weighted by
    how large each input really is (ASVD). Without it, this is the exact truncated SVD and the
    squared Frobenius error equals the sum of the discarded squared singular values.
    """
    if not 0 < rank <= min(weight.shape):
        raise ValueError(
            f"rank must be in [1, {min(weight.shape)}] for a {tuple(weight.shape)} matrix, got {rank}"
        )
    w = weight.detach().double()
    if in_scale is not None:
        s = in_scale.detach().double().clamp_min(1e-8)
        w = w * s
    u, sigma, vh = torch.linalg.svd(w, full_matrices=False)
    root = sigma[:rank].sqrt()
    first = root[:, None] * vh[:rank]
    second = u[:, :rank] * root[None, :]
    if in_scale is not None:
        first = first / s
    return first.to(weight.dtype), second.to(weight.dtype)


class Factored(nn.Sequential):
    """Two thin layers standing in for one: a Sequential (so parameter names are
    ``<path>.0.weight`` and ``<path>.1.weight``) that keeps the attributes model code reads off
    the layer it replaced. Hugging Face models read ``conv.stride`` for their padding
    (MobileNetV2) and ``layer.weight.dtype`` (ViT's patch embedding); a plain Sequential
    has neither. ``weight`` is the dense product, for such reads only."""

    KEPT = (
        "in_features", "out_features", "in_channels", "out_channels", "kernel_size", "stride",
        "padding", "dilation", "groups", "padding_mode",
    )  # fmt: skip

    def __init__(self, first: nn.Module, second: nn.Module, original: nn.Module) -> None:
        super().__init__(first, second)
        for name in self.KEPT:
            if hasattr(original, name):
                object.__setattr__(self, name, getattr(original, name))

    @property
    def weight(self) -> torch.Tensor:  # type: ignore[override]
        first, second = self[0].weight, self[1].weight
        assert isinstance(first, torch.Tensor) and isinstance(second, torch.Tensor)
        with torch.no_grad():
            dense = second.flatten(1) @ first.flatten(1)
        return dense.reshape(second.shape[0], *first.shape[1:])

    @property
    def bias(self) -> torch.Tensor | None:
        bias = self[1].bias
        return bias if isinstance(bias, torch.Tensor) else None


def factorize(layer: nn.Module, rank: int, in_scale: torch.Tensor | None = None) -> Factored:
    """Two layers that approximate ``layer`` at ``rank`` (see :class:`Factored`)."""
    first: nn.Module
    second: nn.Module
    if isinstance(layer, nn.Linear):
        first_w, second_w = svd_factors(layer.weight, rank, in_scale)
        first = nn.Linear(layer.in_features, rank, bias=False)
        second = nn.Linear(rank, layer.out_features, bias=layer.bias is not None)
        first.weight.data.copy_(first_w)
        second.weight.data.copy_(second_w)
    else:
        assert isinstance(layer, nn.Conv2d)
        out_c, in_c, kh, kw = layer.weight.shape
        scale = None if in_scale is None else in_scale.repeat_interleave(kh * kw)
        first_w, second_w = svd_factors(layer.weight.reshape(out_c, -1), rank, scale)
        first = nn.Conv2d(
            in_c,
            rank,
            (kh, kw),
            layer.stride,  # type: ignore[arg-type]
            layer.padding,  # type: ignore[arg-type]
            layer.dilation,  # type: ignore[arg-type]
            bias=False,
        )
        second = nn.Conv2d(rank, out_c, 1, bias=layer.bias is not None)
        first.weight.data.copy_(first_w.reshape(rank, in_c, kh, kw))
        second.weight.data.copy_(second_w.reshape(out_c, rank, 1, 1))
    if layer.bias is not None:
        assert second.bias is not None
        second.bias.data.copy_(layer.bias.detach())
    return Factored(first, second, layer).to(layer.weight.device)


def input_scales(
    model: nn.Module, paths: list[str], inputs: tuple[torch.Tensor, ...]
) -> dict[str, torch.Tensor]:
    """Mean |activation| per input channel of each layer in ``paths``, over ``inputs``."""
    by_path = dict(model.named_modules())
    sums: dict[str, torch.Tensor] = {}

    def hook(path: str):
        def record(_m: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            x = args[0].detach().abs()
            dims = [
                d for d in range(x.dim()) if d != (1 if isinstance(_m, nn.Conv2d) else x.dim() - 1)
            ]
            sums[path] = x.mean(dim=dims)

        return record

    run_watched(model, inputs, [by_path[p].register_forward_pre_hook(hook(p)) for p in paths])
    return {p: s.pow(ACTIVATION_ALPHA) for p, s in sums.items()}


def _set_module(model: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, attr = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, attr, new)


@register_kernel
class LowRank(Kernel):
    """Factor Linear / Conv2d layers into two thinner layers by activation-aware SVD."""

    name = "lowrank"
    knob = "rank"
    stage = "torch"
    order = 20
    activation_aware = True

    def units(self, model: nn.Module, ctx: SurgeryContext, space: SpaceSpec) -> list[Unit]:
        spec = space.lowrank
        if not spec.enabled:
            return []
        units = []
        for path, layer in model.named_modules():
            if path in ctx.ignore or not isinstance(layer, (nn.Linear, nn.Conv2d)):
                continue
            if not is_factorizable(layer):
                continue  # grouped / depthwise convs have nothing to factor
            choices = [
                f
                for f in spec.rank_fractions
                if resolve_rank(layer, f, ctx.profile.round_to, spec.min_rank) is not None
            ]
            if choices:
                info = {"break_even_rank": round(break_even_rank(layer), 1)}
                units.append(Unit(path, self.knob, (1.0, *sorted(choices, reverse=True)), info))
        return units

    def apply(self, model: nn.Module, plan: dict[str, Any], ctx: SurgeryContext) -> dict[str, Any]:
        by_path = dict(model.named_modules())
        ranks: dict[str, int | None] = {}
        for path, fraction in plan.items():
            layer = by_path.get(path)
            if layer is None or not is_factorizable(layer):
                raise CandidateError(f"low-rank: '{path}' is not a Linear or Conv2d to factor")
            ranks[path] = resolve_rank(layer, fraction, ctx.profile.round_to, ctx.min_rank)
        todo = [p for p, r in ranks.items() if r is not None]
        scales = (
            input_scales(model, todo, ctx.calibration_tensors())
            if self.activation_aware and todo
            else {}
        )
        for path in todo:
            rank = ranks[path]
            assert rank is not None
            new = factorize(by_path[path], rank, scales.get(path))
            if not all(bool(torch.isfinite(w).all()) for w in new.parameters()):
                raise CandidateError(f"low-rank: SVD of '{path}' gave non-finite weights")
            _set_module(model, path, new)
        return {"ranks": ranks}
