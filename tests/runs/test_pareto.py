from __future__ import annotations

import pandas as pd
import pytest

from tightfit.runs.pareto import hypervolume, knee

OBJ = ["accuracy", "latency_ms"]


def test_knee_is_the_balanced_point() -> None:
    front = pd.DataFrame(
        {"trial": [1, 2, 3], "accuracy": [0.99, 0.98, 0.80], "latency_ms": [10.0, 4.0, 1.0]}
    )
    assert knee(front, OBJ) == 2
    assert knee(front.iloc[[0]], OBJ) == 1
    with pytest.raises(ValueError):
        knee(front.iloc[[]], OBJ)


def test_hypervolume_relative_to_baseline() -> None:
    base = {"accuracy": 1.0, "latency_ms": 10.0}
    # one point: accuracy drop 0 (scaled 0), latency half the baseline: box 1 x 0.5
    assert hypervolume(
        pd.DataFrame({"accuracy": [1.0], "latency_ms": [5.0]}), base, OBJ
    ) == pytest.approx(0.5)
    two = pd.DataFrame({"accuracy": [1.0, 0.5], "latency_ms": [5.0, 1.0]})
    assert hypervolume(two, base, OBJ) == pytest.approx(0.5 + 0.5 * 0.4)
    assert hypervolume(pd.DataFrame({"accuracy": [1.0], "latency_ms": [20.0]}), base, OBJ) == 0.0
