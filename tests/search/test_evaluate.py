"""evaluate_candidate without Optuna, Ray or MLflow: the pure core of a trial."""

from __future__ import annotations

import pytest

from tightfit.config import config_from_dict, loss_excess
from tightfit.exceptions import CandidateError
from tightfit.objectives import OBJECTIVES
from tightfit.search import Setup, evaluate_candidate
from tightfit.spaces import Candidate
from tightfit.workspace import workspace


@pytest.fixture(scope="module")
def setup(tmp_path_factory, fast_profile) -> Setup:
    work = tmp_path_factory.mktemp("evaluate")
    config = config_from_dict(
        {
            "name": "pure",
            "model": {"callable": "digits-cnn", "kwargs": {"width": 8, "epochs": 2}},
            "data": {"callable": "digits"},
            "workdir": str(work),
        }
    )
    return Setup.of(config, fast_profile, work)


def test_baseline_and_a_compressed_candidate(setup: Setup) -> None:
    ws = workspace(setup)
    base = evaluate_candidate(setup, Candidate(base_model=ws.model_id), baseline_ref_ms=1.0)
    assert base.accuracy > 0.3 and base.report == {}  # a tiny net trained 2 epochs; chance is 0.1
    small = evaluate_candidate(
        setup, Candidate(base_model=ws.model_id, prune={"layer3.conv1": 0.5}, bits={"fc": 8}), 1.0
    )
    assert small.size_mb < base.size_mb
    assert small.report["prune"]["kept_channels"] == {"layer3.conv1": 32}
    assert small.latency.rounds == 3 and small.latency.latency_ms == small.latency.ratio * 1.0


def test_candidate_for_another_model_is_refused(setup: Setup) -> None:
    with pytest.raises(CandidateError, match="made for base model 0000"):
        evaluate_candidate(setup, Candidate(base_model="0000", bits={"fc": 8}))


def test_a_drop_of_exactly_the_limit_is_feasible() -> None:
    accuracy = OBJECTIVES["accuracy"]
    assert 0.747 - 0.737 > 0.01  # binary floats: the naive test calls this infeasible
    assert loss_excess(accuracy, 0.747, 0.737, 0.01) == 0.0
    assert loss_excess(accuracy, 0.747, 0.736, 0.01) > 0
    assert loss_excess(accuracy, 0.747, 0.738, 0.01) < 0
    # one rule for trials and for the standard recipe's variants: both constraints
    base = {"name": "c", "model": "digits-cnn", "data": "digits"}
    config = config_from_dict({**base, "constraints": {"max_latency_ms": 2.0}})
    assert config.feasible(0.747, 0.737, 2.0)
    assert not config.feasible(0.747, 0.736, 1.0) and not config.feasible(0.747, 0.747, 2.01)
    assert config_from_dict(base).feasible(0.747, 0.737, 1e9)


def test_perplexity_is_constrained_relative_to_the_baseline() -> None:
    """Lower is better, and the cap is a fraction of the baseline: +5% by default."""
    config = config_from_dict(
        {"name": "p", "model": "digits-cnn", "data": "digits",
         "objectives": ["perplexity", "latency_ms"]}
    )  # fmt: skip
    assert config.quality.name == "perplexity" and config.directions == ["minimize", "minimize"]
    assert config.feasible(20.0, 21.0, 1.0)  # +5.0%: at the limit
    assert not config.feasible(20.0, 21.02, 1.0)  # +5.1%
    assert config.feasible(20.0, 15.0, 1.0)  # better than the baseline
    assert config.quality.loss(20.0, 22.0) == pytest.approx(0.1)
    assert config.quality.loss(20.0, 18.0) == pytest.approx(-0.1)
    tight = config_from_dict(
        {"name": "p", "model": "digits-cnn", "data": "digits",
         "objectives": ["perplexity", "latency_ms"], "constraints": {"max_perplexity_increase": 0.01}}
    )  # fmt: skip
    assert not tight.feasible(20.0, 20.4, 1.0)
