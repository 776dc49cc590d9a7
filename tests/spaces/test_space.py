from __future__ import annotations

import optuna
import pytest

from tightfit.config import SpaceSpec
from tightfit.kernels import discover_units
from tightfit.spaces import Candidate, CompressionSpace


def test_units_of_a_residual_net(tiny_model, tiny_ctx, default_space: SpaceSpec) -> None:
    units = {u.param_name: u for u in discover_units(tiny_model, tiny_ctx, default_space)}
    # one ratio per coupled group: conv2 and the shortcut share the residual channels
    prune = {n for n in units if n.endswith(".prune_ratio")}
    assert prune == {
        "stem.0.prune_ratio",
        "conv1.prune_ratio",
        "shortcut.prune_ratio",
    } or prune == {"stem.0.prune_ratio", "conv1.prune_ratio", "conv2.prune_ratio"}
    residual = next(
        u for n, u in units.items() if n in ("shortcut.prune_ratio", "conv2.prune_ratio")
    )
    assert {"conv2", "shortcut", "fc"} <= set(residual.info["members"])
    assert "fc.prune_ratio" not in units  # the classifier's outputs are never pruned
    # levels run from the no-op to the strongest compression
    assert units["conv2.rank"].choices == (1.0, 0.75, 0.5, 0.25)
    assert units["stem.0.prune_ratio"].choices == tuple(sorted(units["stem.0.prune_ratio"].choices))
    assert units["fc.bits"].choices == (32, 8)  # Gemm: no 4-bit
    for u in units.values():
        assert len(u.choices) > 1


def test_suggest_and_uniform(tiny_model, tiny_ctx, default_space: SpaceSpec) -> None:
    space = CompressionSpace(discover_units(tiny_model, tiny_ctx, default_space), "m", seed=1)
    study = optuna.create_study(
        directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=0)
    )
    trial = study.ask()
    c = space.suggest(trial)
    assert isinstance(c, Candidate) and set(trial.params) == {u.level_name for u in space.units}
    assert space.candidate(trial.params) == c
    assert space.params_of(c) == trial.params  # levels round-trip
    u = space.uniform(prune_ratio=0.3, bits=8)
    assert set(u.prune.values()) == {0.25} and set(u.bits.values()) == {8} and not u.rank
    assert space.params_of(space.baseline()) == {x.level_name: 0 for x in space.units}
    values = space.values_of(u)
    assert values["conv2.rank"] == 1.0 and values["fc.bits"] == 8


def test_duplicate_units_rejected(tiny_model, tiny_ctx, default_space: SpaceSpec) -> None:
    units = discover_units(tiny_model, tiny_ctx, default_space)
    with pytest.raises(ValueError, match="duplicate"):
        CompressionSpace([*units, units[0]], "m")


def test_disabled_kernels_offer_nothing(tiny_model, tiny_ctx) -> None:
    spec = SpaceSpec.model_validate({"prune": {"enabled": False}, "lowrank": {"enabled": False}})
    units = discover_units(tiny_model, tiny_ctx, spec)
    assert units and all(u.knob == "bits" for u in units)
