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


def test_hypervolume_history_counts_every_trial_and_only_feasible_points() -> None:
    """After each finished trial, in the order they finished: infeasible, failed and stopped
    trials spend a trial and add nothing."""
    import optuna
    from optuna.trial import TrialState

    from tightfit.runs.pareto import hypervolume_history

    base = {"accuracy": 1.0, "latency_ms": 10.0}
    study = optuna.create_study(directions=["maximize", "minimize"])
    for values, violation, state in [
        ([1.0, 5.0], -1.0, TrialState.COMPLETE),  # hv 0.5
        ([1.0, 1.0], 1.0, TrialState.COMPLETE),  # infeasible: nothing
        (None, 1.0, TrialState.PRUNED),  # stopped early: nothing
        (None, 0.0, TrialState.FAIL),
        ([0.5, 1.0], -1.0, TrialState.COMPLETE),  # + 0.5 x 0.4
    ]:
        t = study.ask()
        t.set_constraint("accuracy_drop", violation)
        study.tell(t, values, state=state)
    history = hypervolume_history(study, base, OBJ)
    assert history == pytest.approx([0.5, 0.5, 0.5, 0.5, 0.7])


def test_hypervolume_through_the_one_private_optuna_call() -> None:
    import numpy as np

    from tightfit._optuna_private import hypervolume

    points = np.array([[0.5, 0.5], [0.6, 0.6], [0.25, 0.9]])  # the second is dominated
    assert hypervolume(points, np.ones(2)) == pytest.approx(0.25 + 0.25 * 0.1)
