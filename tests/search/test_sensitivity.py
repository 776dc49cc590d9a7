"""The sensitivity scan's table logic: shrinking the space and seeding allocations."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from tightfit.search import sensitivity
from tightfit.spaces import CompressionSpace, Unit


@pytest.fixture()
def space() -> CompressionSpace:
    return CompressionSpace(
        [
            Unit("a", "prune_ratio", (0.0, 0.25, 0.5)),
            Unit("b", "prune_ratio", (0.0, 0.25, 0.5)),
            Unit("c", "bits", (32, 8)),
        ],
        "m",
    )


def scan_of(space: CompressionSpace, drops: dict[tuple[str, int], float]) -> pd.DataFrame:
    rows = [(p, 0.9 - drops[(p.unit.param_name, p.level)], 1.0) for p in sensitivity.probes(space)]
    return sensitivity.table(rows, baseline=0.9)


DROPS = {
    ("a.prune_ratio", 1): 0.002,
    ("a.prune_ratio", 2): 0.2,  # breaks the 1-point constraint alone
    ("b.prune_ratio", 1): 0.004,
    ("b.prune_ratio", 2): 0.006,
    ("c.bits", 1): -0.001,  # int8 costs nothing (noise: a tiny gain)
}


def test_probes_are_every_unit_alone_at_every_level(space: CompressionSpace) -> None:
    probes = sensitivity.probes(space)
    assert [(p.unit.param_name, p.level) for p in probes] == list(DROPS)
    c = probes[1].candidate(space)
    assert c.prune == {"a": 0.5} and not c.bits and not c.rank


def test_shrink_drops_levels_that_break_the_constraint_alone(space: CompressionSpace) -> None:
    scan = scan_of(space, DROPS)
    small, dropped = sensitivity.shrink(space, scan, max_drop=0.01, n=500, z=2.0)
    assert dropped == {"a.prune_ratio": [0.5]}
    levels = {u.param_name: u.choices for u in small.units}
    assert levels == {
        "a.prune_ratio": (0.0, 0.25),
        "b.prune_ratio": (0.0, 0.25, 0.5),
        "c.bits": (32, 8),
    }
    # a unit whose first level already breaks it leaves the space; so does a failed probe
    worse = scan_of(space, {**DROPS, ("a.prune_ratio", 1): 0.3})
    worse.loc[worse["param"] == "c.bits", ["accuracy", "accuracy_drop"]] = math.nan
    small, dropped = sensitivity.shrink(space, worse, max_drop=0.01, n=500, z=2.0)
    assert [u.param_name for u in small.units] == ["b.prune_ratio"]
    assert dropped == {"a.prune_ratio": [0.25, 0.5], "c.bits": [8]}


def test_shrink_keeps_a_level_within_the_subset_noise(space: CompressionSpace) -> None:
    """0.03 above the limit on 100 samples is within 2 standard errors (about 0.06): kept."""
    scan = scan_of(space, {**DROPS, ("a.prune_ratio", 2): 0.04})
    _, dropped = sensitivity.shrink(space, scan, max_drop=0.01, n=100, z=2.0)
    assert dropped == {}
    _, dropped = sensitivity.shrink(space, scan, max_drop=0.01, n=5000, z=2.0)
    assert dropped == {"a.prune_ratio": [0.5]}


def test_allocation_fills_the_budget_cheapest_step_first(space: CompressionSpace) -> None:
    scan = scan_of(space, DROPS)
    # budget 0.01: int8 (0), a->0.25 (0.002), b->0.25 (0.004), b->0.5 (+0.002): total 0.008
    c = sensitivity.allocation(space, scan, budget=0.01)
    assert c.prune == {"a": 0.25, "b": 0.5} and c.bits == {"c": 8}
    # budget 0.003: int8 and a->0.25 only
    c = sensitivity.allocation(space, scan, budget=0.003)
    assert c.prune == {"a": 0.25} and c.bits == {"c": 8}
    seeds = sensitivity.seeds(space, scan, max_drop=0.01, k=3)
    assert len(seeds) == len({s.to_json() for s in seeds}) <= 3
    assert seeds[0] == sensitivity.allocation(space, scan, budget=0.005)
