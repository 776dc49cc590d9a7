"""The one table of objective directions, and the comparisons built on it."""

from __future__ import annotations

import pytest

from tightfit import objectives as obj


def test_directions_and_signs() -> None:
    assert [obj.direction(n) for n in ("accuracy", "latency_ms", "size_mb")] == [
        "maximize",
        "minimize",
        "minimize",
    ]
    assert obj.sign("accuracy") == -1.0 and obj.sign("latency_ms") == 1.0
    with pytest.raises(ValueError, match="unknown objective 'speed'; choose from accuracy"):
        obj.direction("speed")


def test_dominance_goes_each_objectives_way() -> None:
    a = {"accuracy": 0.9, "latency_ms": 1.0}
    assert obj.dominates(a, {"accuracy": 0.8, "latency_ms": 1.0})  # more accurate
    assert obj.dominates(a, {"accuracy": 0.9, "latency_ms": 2.0})  # faster
    assert not obj.dominates(a, dict(a))  # equal
    assert not obj.dominates(a, {"accuracy": 0.95, "latency_ms": 2.0})  # a trade-off
    assert not obj.dominates(a, {"size_mb": 1.0})  # nothing shared


def test_hypervolume_in_baseline_relative_coordinates() -> None:
    base = {"accuracy": 0.8, "latency_ms": 2.0}
    names = ["accuracy", "latency_ms"]
    assert obj.relative_to_baseline(0.8, 0.8, "accuracy") == 0.0  # no drop
    assert obj.relative_to_baseline(1.0, 2.0, "latency_ms") == 0.5  # half the time
    # perplexity: its relative increase, so points a little worse than the baseline still count
    assert obj.relative_to_baseline(22.0, 20.0, "perplexity") == pytest.approx(0.1)
    worse = {"perplexity": 22.0, "latency_ms": 0.5}
    assert obj.hypervolume([worse], {"perplexity": 20.0, "latency_ms": 1.0},
                           ["perplexity", "latency_ms"]) == pytest.approx(0.9 * 0.5)  # fmt: skip
    # no drop at half the latency: the box [0, 1] x [0.5, 1]
    assert obj.hypervolume([{"accuracy": 0.8, "latency_ms": 1.0}], base, names) == pytest.approx(
        0.5
    )
    # a point worse than the baseline adds nothing
    assert obj.hypervolume([{"accuracy": 0.7, "latency_ms": 3.0}], base, names) == 0.0
