"""The one adapter around torch-pruning (DepGraph); nothing else imports torch_pruning.

Ratios are searched per *coupled group*: torch-pruning applies one ratio to every layer of a
group whatever per-layer ratios it is given (research/surgery-and-latency.md A1.4), so the
search names each group by its root module and gives it one ratio.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn
from torch_pruning.pruner import function

ROOT_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


@dataclass(frozen=True)
class CoupledGroup:
    root: str  # module path of the group's root, the group's name
    members: tuple[str, ...]  # module paths whose out- or in-channels change with the root's
    channels: int  # out-channels of the root before pruning


def _out_channels(module: nn.Module) -> int:
    if isinstance(module, nn.Linear):
        return module.out_features
    return int(module.out_channels)  # type: ignore[arg-type]


def _paths(model: nn.Module) -> dict[nn.Module, str]:
    return {m: p for p, m in model.named_modules()}


def _modules(model: nn.Module, paths: tuple[str, ...] | list[str]) -> list[nn.Module]:
    by_path = dict(model.named_modules())
    return [by_path[p] for p in paths if p in by_path]


class ContributionImportance(tp.importance.GroupMagnitudeImportance):
    """A channel's expected squared contribution to the layers it feeds.

    For each consumer of the group's channels (a Conv without groups, or a Linear, whose input
    channels shrink with the group) a channel scores the squared norm of its weight column
    times its mean square on calibration data: the energy it adds to that layer's output
    (exact for a 1x1 convolution or a Linear when channels are uncorrelated; the structured
    form of Wanda's |W|*||X||). Scores add over consumers and are mean-normalised per group,
    as torch-pruning's default. Magnitude ranks a channel by its weights alone, and a
    large weight on a channel that is nearly always zero still keeps it.

    ``energy``: by consumer path, the mean square of each input channel (see
    :func:`tightfit.kernels.pruning.input_energy`). A group with no measured consumer falls back
    to magnitude and is listed in ``by_magnitude``, so the kernel can report it.
    """

    def __init__(self, paths: dict[nn.Module, str], energy: dict[str, torch.Tensor]) -> None:
        super().__init__(p=2)
        self.paths = paths
        self.energy = energy
        self.by_magnitude: list[str] = []

    @torch.no_grad()
    def __call__(self, group):  # type: ignore[no-untyped-def]
        scores, root_idxs = [], []
        for i, (dep, idxs) in enumerate(group):
            layer = dep.layer
            if dep.pruning_fn not in (
                function.prune_conv_in_channels,
                function.prune_linear_in_channels,
            ):
                continue
            energy = self.energy.get(self.paths.get(layer, ""))
            if energy is None or getattr(layer, "groups", 1) != 1:
                continue  # depthwise convs are members of the group, not its consumers
            columns = layer.weight.detach().transpose(0, 1).flatten(1).pow(2).sum(1)
            scores.append((columns * energy.to(columns))[idxs])
            root_idxs.append(group[i].root_idxs)
        if not scores:
            self.by_magnitude.append(self.paths.get(group[0].dep.target.module, "?"))
            return super().__call__(group)
        return self._normalize(self._reduce(scores, root_idxs), self.normalizer)


def _importance(
    model: nn.Module, energy: dict[str, torch.Tensor] | None
) -> tp.importance.GroupMagnitudeImportance:
    if energy is None:
        return tp.importance.GroupMagnitudeImportance(p=2)
    return ContributionImportance(_paths(model), energy)


def coupled_groups(
    model: nn.Module, example_inputs: tuple[torch.Tensor, ...], ignored: tuple[str, ...]
) -> list[CoupledGroup]:
    """Every prunable coupled group of ``model``, rooted at a Conv or Linear not in ``ignored``."""
    paths = _paths(model)
    with torch.enable_grad():  # DepGraph traces autograd: it must not run under no_grad
        graph = tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs)
        groups = graph.get_all_groups(
            ignored_layers=_modules(model, ignored), root_module_types=list(ROOT_TYPES)
        )
        out = []
        for group in groups:
            root = group[0].dep.target.module
            if root not in paths:
                continue
            members = []
            for dep, _ in group:
                path = paths.get(dep.target.module)
                if path is not None and path not in members:
                    members.append(path)
            channels = _out_channels(root)
            out.append(CoupledGroup(root=paths[root], members=tuple(members), channels=channels))
    return sorted(out, key=lambda g: g.root)


def prune_groups(
    model: nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    ratios: dict[str, float],
    ignored: tuple[str, ...],
    round_to: int,
    energy: dict[str, torch.Tensor] | None = None,
) -> tuple[dict[str, int], list[str]]:
    """Prune each group in ``ratios`` (by root path) in place: by L2 magnitude of the group,
    or with ``energy`` by :class:`ContributionImportance`.

    Returns the remaining out-channels of every pruned root, and the groups ranked by
    magnitude although ``energy`` was given. Deterministic: the same weights (and energy) always
    remove the same channels.
    """
    by_path = dict(model.named_modules())
    missing = sorted(set(ratios) - set(by_path))
    if missing:
        raise KeyError(f"no module at path(s) {missing}")
    ratio_dict = {by_path[p]: r for p, r in ratios.items() if r > 0}
    if not ratio_dict:
        return {}, []
    importance = _importance(model, energy)
    with torch.enable_grad():
        pruner = tp.pruner.BasePruner(
            model,
            example_inputs,
            importance=importance,
            pruning_ratio=0.0,
            pruning_ratio_dict=ratio_dict,
            ignored_layers=_modules(model, ignored),
            round_to=round_to,
        )
        pruner.step()
    by_magnitude = getattr(importance, "by_magnitude", [])
    return {p: _out_channels(by_path[p]) for p in ratios}, sorted(set(by_magnitude))


def channel_importance(
    model: nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    ignored: tuple[str, ...],
    energy: dict[str, torch.Tensor] | None = None,
) -> dict[str, list[float]]:
    """Each coupled group's per-channel importance (by root path), as :func:`prune_groups`
    ranks channels, mean-normalised per group (torch-pruning's default, the scale its global
    pruning compares groups on)."""
    paths = _paths(model)
    importance = _importance(model, energy)
    out: dict[str, list[float]] = {}
    with torch.enable_grad():
        graph = tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs)
        for group in graph.get_all_groups(
            ignored_layers=_modules(model, ignored), root_module_types=list(ROOT_TYPES)
        ):
            root = paths.get(group[0].dep.target.module)
            if root is not None:
                with torch.no_grad():
                    out[root] = [float(v) for v in importance(group)]
    return out
