"""Whether an export's re-measured latency ratio agrees with the logged one (pure logic on a
real Optuna study)."""

from __future__ import annotations

import math

import optuna
import pytest

from tightfit.runs.export import Z95, expected_range
from tightfit.search._reuse import MIN_REPEAT_PAIRS, repeat_error


def test_expected_range_adds_both_measurements_noise() -> None:
    # two measurements, each +-2% (95%): their difference has sd sqrt(2) x theirs
    logged, now = (0.5, 0.5 / 1.02, 0.5 * 1.02), (0.52, 0.52 / 1.02, 0.52 * 1.02)
    low, high = expected_range(logged, now, None)
    assert math.log(high / 0.5) == pytest.approx(math.sqrt(2) * math.log(1.02), rel=1e-6)
    assert math.log(0.5 / low) == pytest.approx(math.sqrt(2) * math.log(1.02), rel=1e-6)
    assert not low < 0.52 < high  # 4% apart, beyond the 2.8% of the two intervals' noise
    # a search whose repeated measurements disagreed by more widens the range to that
    low_r, high_r = expected_range(logged, now, 0.05)
    assert math.log(high_r / 0.5) == pytest.approx(Z95 * 0.05)
    assert low_r < low and high_r > high and low_r < 0.52 < high_r
    # a smaller repeat error than the intervals' noise changes nothing
    assert expected_range(logged, now, 0.001) == (low, high)
    assert expected_range(None, now, 0.05) is None


def _study(pairs: list[tuple[float, float]]) -> optuna.Study:
    """A study whose trial i was measured at pairs[i][0] ms and re-measured at pairs[i][1]."""
    study = optuna.create_study()
    for logged, _ in pairs:
        trial = study.ask()
        trial.set_user_attr("latency", {"latency_ms": logged})
        study.tell(trial, logged)
    study.set_user_attr(
        "remeasured_jointly",
        {
            "trials": list(range(len(pairs))),
            "latency_ms": {str(i): p[1] for i, p in enumerate(pairs)},
        },
    )
    return study


def test_repeat_error_is_the_robust_spread_of_repeated_measurements() -> None:
    # log differences of +-3% (one outlier at +50% barely moves a median-based estimate)
    ups = [(1.0, math.exp(0.03)), (2.0, 2.0 * math.exp(-0.03)), (1.5, 1.5 * math.exp(0.03))]
    pairs = ups + [(1.2, 1.2 * math.exp(-0.03)), (0.8, 0.8 * 1.5)]
    assert repeat_error(_study(pairs)) == pytest.approx(1.4826 * 0.03, rel=1e-6)
    # too few pairs: no estimate rather than a noisy one
    assert repeat_error(_study(pairs[: MIN_REPEAT_PAIRS - 1])) is None
    assert repeat_error(optuna.create_study()) is None


def test_lopsided_intervals_use_the_sides_that_meet() -> None:
    """A bootstrap interval of a median is often lopsided (the Fashion-MNIST knee's was): a
    re-measurement below the logged ratio is judged by the logged interval's lower half and its
    own upper half, so the logged interval always lies within the range."""
    logged, now = (0.531, 0.460, 0.562), (0.467, 0.461, 0.528)
    low, high = expected_range(logged, now, None)
    assert low <= logged[1] and logged[2] <= high
    assert low < now[0]  # inside its lower side
    below = math.hypot(math.log(0.531 / 0.460), math.log(0.528 / 0.467)) / Z95
    assert math.log(0.531 / low) == pytest.approx(Z95 * below)
    above = math.hypot(math.log(0.562 / 0.531), math.log(0.467 / 0.461)) / Z95
    assert math.log(high / 0.531) == pytest.approx(Z95 * above)
