"""CompressionSpace: the units every kernel found in a model, and how Optuna samples them."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from tightfit.spaces._candidate import DROP, Candidate
from tightfit.spaces._unit import Unit

if TYPE_CHECKING:
    import optuna


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
        params = {
            u.param_name: u.choices[int(levels[u.level_name])]
            for u in self.units
            if int(levels.get(u.level_name, 0))  # level 0 is the no-op
        }
        return Candidate.from_params(self.base_model, params, seed=self.seed)

    def baseline(self) -> Candidate:
        return Candidate(base_model=self.base_model, seed=self.seed)

    def uniform(
        self,
        prune_ratio: float = 0.0,
        rank_fraction: float = 1.0,
        bits: int = 32,
        drop_fraction: float = 0.0,
    ) -> Candidate:
        """The same level on every unit (the nearest level a unit offers, never beyond it).

        ``drop_fraction`` of each stack of blocks (the depth kernel's units) is dropped, the
        blocks evenly spaced through the stack (:func:`spread_blocks`).
        """
        target = {"prune_ratio": prune_ratio, "rank": rank_fraction, "bits": bits}
        params: dict[str, Any] = {}
        for path in self.dropped_blocks(drop_fraction):
            params[f"{path}.{DROP}"] = True
        for u in self.units:
            if u.knob not in target:  # another kernel's knob: left at its no-op level
                continue
            want = target[u.knob]
            if u.knob == "prune_ratio":
                params[u.param_name] = max((c for c in u.choices if c <= want), default=0.0)
            elif u.knob == "rank":
                params[u.param_name] = min(u.choices, key=lambda c: (abs(c - want), -c))
            else:
                params[u.param_name] = want if want in u.choices else 32
        return Candidate.from_params(self.base_model, params, seed=self.seed)

    def dropped_blocks(self, fraction: float) -> list[str]:
        """The blocks that dropping ``fraction`` of each stack drops, evenly spaced
        (:func:`spread_blocks`); only blocks the space offers to drop."""
        droppable = {u.path: u for u in self.units if u.knob == DROP}
        stacks = {p.rpartition(".")[0]: int(u.info.get("blocks", 0)) for p, u in droppable.items()}
        out = []
        for stack, n in stacks.items():
            k = round(fraction * n)
            out += [p for i in spread_blocks(n, k) if (p := f"{stack}.{i}") in droppable]
        return out

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


def spread_blocks(n: int, k: int) -> list[int]:
    """``k`` of ``n`` block indices, evenly spaced: the middle block of each of ``k`` equal
    runs, the later one on a tie (6 blocks: 1 dropped is 3; 2 are 1 and 4; 3 are 1, 3 and 5).
    A stack keeps at least one block."""
    k = max(0, min(k, n - 1))
    return sorted({math.floor((j + 0.5) * n / k) for j in range(k)})
