"""CompressionSpace: the units every kernel found in a model, and how Optuna samples them."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tightfit.kernels import Refusal, SurgeryContext, Unit, probe_units
from tightfit.kernels._registry import _KERNELS
from tightfit.spaces._candidate import Candidate

if TYPE_CHECKING:
    import optuna
    from torch import nn

    from tightfit.config import SpaceSpec


def discover(
    model: nn.Module, ctx: SurgeryContext, space: SpaceSpec
) -> tuple[list[Unit], list[Refusal]]:
    """Ask every registered kernel which units of ``model`` it can act on, and which parts it
    will not act on; then try each torch-stage kernel's strongest level (see
    :func:`tightfit.kernels.probe_units`), refusing the units that fail it."""
    units: list[Unit] = []
    refused: list[Refusal] = []
    for kernel in _KERNELS.values():
        units.extend(kernel.units(model, ctx, space))
        refused.extend(kernel.refusals(model, ctx, space))
    with tempfile.TemporaryDirectory(prefix="tightfit-probe-") as scratch:
        units, failed = probe_units(model, units, ctx, Path(scratch))
    return units, unrecognised_layers(model) + refused + failed


def unrecognised_layers(model: nn.Module) -> list[Refusal]:
    """Layers holding a weight matrix that no kernel knows the layout of (transformers'
    ``Conv1D`` in GPT-2, stores its weight in x out): left as they are, and said so."""
    from torch import nn

    known = (nn.Linear, nn.modules.conv._ConvNd, nn.Embedding, nn.EmbeddingBag)
    out = []
    for path, module in model.named_modules():
        weight = module._parameters.get("weight")
        if weight is not None and weight.dim() >= 2 and not isinstance(module, known):
            out.append(
                Refusal(
                    path,
                    "*",
                    f"{type(module).__name__} is not an nn.Linear or nn.ConvNd: no kernel knows "
                    "its weight layout, so it is left as it is",
                )
            )
    return out


def discover_units(model: nn.Module, ctx: SurgeryContext, space: SpaceSpec) -> list[Unit]:
    """The units of :func:`discover` (refusals left out)."""
    return discover(model, ctx, space)[0]


class CompressionSpace:
    """The searchable knobs of one base model.

    Optuna params are levels named ``<module path>.<knob>.level`` (see :meth:`suggest`); values
    are named ``<module path>.<knob>`` (see :class:`Candidate`).
    """

    def __init__(self, units: Sequence[Unit], base_model: str, seed: int = 0) -> None:
        names = [u.param_name for u in units]
        if len(set(names)) != len(names):
            raise ValueError(
                f"duplicate unit names: {sorted(n for n in names if names.count(n) > 1)}"
            )
        self.units = list(units)
        self.base_model = base_model
        self.seed = seed

    def __len__(self) -> int:
        return len(self.units)

    def suggest(self, trial: optuna.Trial) -> Candidate:
        """Sample one level per unit: an ordered integer, 0 = no-op, higher = stronger.

        Integers (not categorical values) let every sampler use the order of the levels: TPE's
        kernels and NSGA-II's crossover treat neighbouring levels as close, and QMC spreads its
        points over them.
        """
        levels = {
            u.level_name: trial.suggest_int(u.level_name, 0, len(u.choices) - 1) for u in self.units
        }
        return self.candidate(levels)

    def candidate(self, levels: dict[str, int]) -> Candidate:
        """The candidate of Optuna params (``<path>.<knob>.level``; absent: level 0)."""
        params = {u.param_name: u.choices[int(levels.get(u.level_name, 0))] for u in self.units}
        return Candidate.from_params(self.base_model, params, seed=self.seed)

    def baseline(self) -> Candidate:
        return Candidate(base_model=self.base_model, seed=self.seed)

    def uniform(
        self, prune_ratio: float = 0.0, rank_fraction: float = 1.0, bits: int = 32
    ) -> Candidate:
        """The same level on every unit (the nearest level a unit offers, never beyond it)."""
        target = {"prune_ratio": prune_ratio, "rank": rank_fraction, "bits": bits}
        params: dict[str, Any] = {}
        for u in self.units:
            want = target[u.knob]
            if u.knob == "prune_ratio":
                params[u.param_name] = max((c for c in u.choices if c <= want), default=0.0)
            elif u.knob == "rank":
                params[u.param_name] = min(u.choices, key=lambda c: (abs(c - want), -c))
            else:
                params[u.param_name] = want if want in u.choices else 32
        return Candidate.from_params(self.base_model, params, seed=self.seed)

    def params_of(self, candidate: Candidate) -> dict[str, int]:
        """Every unit's level for ``candidate`` (no-op levels included), for enqueue_trial.

        A value the unit does not offer raises ValueError.
        """
        values = self.values_of(candidate)
        levels = {}
        for u in self.units:
            if values[u.param_name] not in u.choices:
                raise ValueError(
                    f"{u.param_name} = {values[u.param_name]} is not one of its levels {u.choices}"
                )
            levels[u.level_name] = u.choices.index(values[u.param_name])
        return levels

    def values_of(self, candidate: Candidate) -> dict[str, Any]:
        """Every unit's value for ``candidate`` (no-op values included): what MLflow shows."""
        given = candidate.to_params()
        return {u.param_name: given.get(u.param_name, u.choices[0]) for u in self.units}

    def describe(self) -> list[dict[str, Any]]:
        return [
            {
                "param": u.param_name,
                "levels": list(u.choices),
                **{k: v for k, v in u.info.items() if k != "nodes"},
            }
            for u in self.units
        ]
