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
) -> dict[str, int]:
    """Prune each group in ``ratios`` (by root path) in place, by L2 magnitude of the group.

    Returns the remaining out-channels of every pruned root. Deterministic: the importance is
    the weights' magnitude, so the same ratios always remove the same channels.
    """
    by_path = dict(model.named_modules())
    missing = sorted(set(ratios) - set(by_path))
    if missing:
        raise KeyError(f"no module at path(s) {missing}")
    ratio_dict = {by_path[p]: r for p, r in ratios.items() if r > 0}
    if not ratio_dict:
        return {}
    with torch.enable_grad():
        pruner = tp.pruner.BasePruner(
            model,
            example_inputs,
            importance=tp.importance.GroupMagnitudeImportance(p=2),
            pruning_ratio=0.0,
            pruning_ratio_dict=ratio_dict,
            ignored_layers=_modules(model, ignored),
            round_to=round_to,
        )
        pruner.step()
    return {p: _out_channels(by_path[p]) for p in ratios}


def channel_importance(
    model: nn.Module, example_inputs: tuple[torch.Tensor, ...], ignored: tuple[str, ...]
) -> dict[str, list[float]]:
    """Each coupled group's per-channel importance (by root path), as :func:`prune_groups`
    ranks channels: L2 magnitude over the whole group, mean-normalised per group (torch-pruning's
    default, the scale its global pruning compares groups on)."""
    paths = _paths(model)
    importance = tp.importance.GroupMagnitudeImportance(p=2)
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
