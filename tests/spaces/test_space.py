from __future__ import annotations

import optuna
import pytest

from tightfit.config import SpaceSpec
from tightfit.kernels import discover_units
from tightfit.spaces import Candidate, CompressionSpace, Unit
from tightfit.spaces._space import spread_blocks


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


@pytest.mark.parametrize(
    ("n", "k", "expected"),
    [(6, 1, [3]), (6, 2, [1, 4]), (6, 3, [1, 3, 5]), (30, 5, [3, 9, 15, 21, 27]), (6, 0, [])],
)
def test_dropped_blocks_are_evenly_spaced(n: int, k: int, expected: list[int]) -> None:
    assert spread_blocks(n, k) == expected


def test_a_stack_keeps_one_block() -> None:
    assert spread_blocks(4, 4) == [0, 2, 3]  # k clipped to 3
    assert len(spread_blocks(2, 2)) == 1


def test_uniform_drops_a_share_of_each_stack() -> None:
    units = [Unit(f"enc.layer.{i}", "drop", (False, True), {"blocks": 6}) for i in range(6)]
    units += [Unit(f"dec.{i}", "drop", (False, True), {"blocks": 3}) for i in range(3)]
    units += [Unit(f"enc.layer.{i}.fc", "bits", (32, 8)) for i in range(6)]
    space = CompressionSpace(units, "m")
    c = space.uniform(bits=8, drop_fraction=1 / 3)
    values = space.values_of(c)
    dropped = sorted(p.removesuffix(".drop") for p, v in values.items() if v is True)
    assert dropped == ["dec.1", "enc.layer.1", "enc.layer.4"]
    assert [values[f"enc.layer.{i}.fc.bits"] for i in range(6)] == [8, 32, 8, 8, 32, 8]
    assert space.uniform(bits=8).to_params() == space.uniform(bits=8, drop_fraction=0).to_params()
    # a block the space does not offer (e.g. ignored by the config) is never dropped
    partial = CompressionSpace([u for u in units if u.path != "enc.layer.4"], "m")
    assert "enc.layer.4.drop" not in partial.uniform(drop_fraction=1 / 3).to_params()


def test_choices_inside_a_dropped_block_are_moot() -> None:
    """Levels that differ only inside a dropped block are one model, so one candidate (one
    result: the driver tells a repeat from the first trial's)."""
    units = [Unit(f"layer.{i}", "drop", (False, True), {"blocks": 3}) for i in range(3)]
    units += [Unit(f"layer.{i}.fc", "bits", (32, 8)) for i in range(3)]
    units += [Unit(f"layer.{i}.mlp", "prune_ratio", (0.0, 0.5)) for i in range(3)]
    units += [Unit("layer.10.fc", "rank", (1.0, 0.5))]  # not inside layer.1: a name prefix
    space = CompressionSpace(units, "m")
    drop_1 = {"layer.1.drop.level": 1, "layer.10.fc.rank.level": 1, "layer.0.fc.bits.level": 1}
    inside = {"layer.1.fc.bits.level": 1, "layer.1.mlp.prune_ratio.level": 1}
    a, b = space.candidate(drop_1), space.candidate({**drop_1, **inside})
    assert a == b and a.to_json() == b.to_json()
    assert b.to_params() == {
        "layer.0.fc.bits": 8,
        "layer.1.drop": True,
        "layer.10.fc.rank": 0.5,
    }
    assert b.summary()["n_int8"] == 1 and b.summary()["n_dropped_blocks"] == 1
    kept = space.candidate(inside)  # the block kept: its choices are the model
    assert kept.to_params() == {"layer.1.fc.bits": 8, "layer.1.mlp.prune_ratio": 0.5}
    assert Candidate(base_model="m", other={"drop": {"layer.1": False}}).is_baseline
