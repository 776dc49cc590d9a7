"""The built-in metrics a data callable names (``metric`` and ``extra_metrics``)."""

from __future__ import annotations

import numpy as np
import pytest

from tightfit.task import METRICS, perplexity


def test_top5_accuracy_counts_a_target_among_the_five_highest_outputs() -> None:
    outputs = np.array([[9, 8, 7, 6, 5, 4, 0.0], [9, 8, 7, 6, 5, 4, 0.0]])
    # sample 0's target (index 4) is 5th highest; sample 1's (index 6) is last
    assert METRICS["top5_accuracy"].fn(outputs, np.array([4, 6])) == 0.5
    # fewer than 5 classes: every target is in the top k
    assert METRICS["top5_accuracy"].fn(np.array([[0.1, 0.9]]), np.array([0])) == 1.0


def test_f1_macro_sees_the_class_accuracy_hides() -> None:
    targets = np.array([0] * 9 + [1])
    outputs = np.tile([1.0, 0.0], (10, 1))  # always class 0: accuracy 0.9
    assert METRICS["accuracy"].fn(outputs, targets) == pytest.approx(0.9)
    assert METRICS["f1_macro"].fn(outputs, targets) == pytest.approx((2 * 0.9 / 1.9 + 0) / 2)


def test_perplexity_is_next_token_and_lower_is_better() -> None:
    assert METRICS["perplexity"].direction == "minimize"
    assert METRICS["accuracy"].direction == METRICS["f1_macro"].direction == "maximize"
    ids = np.array([[1, 2, 3, 0]])
    uniform = np.zeros((1, 4, 5))
    assert perplexity(uniform, ids) == pytest.approx(5.0)  # a uniform guess over 5 tokens
    sure = np.full((1, 4, 5), -50.0)
    sure[0, np.arange(3), ids[0, 1:]] = 50.0  # position t puts its mass on token t + 1
    assert perplexity(sure, ids) == pytest.approx(1.0)
    masked = ids.copy()
    masked[0, 2:] = -100  # only token 1 -> 2 is scored
    half = uniform.copy()
    half[0, 0, 2] = np.log(4 * 3)  # p(2) = 12 / (12 + 4) = 0.75
    assert perplexity(half, masked) == pytest.approx(1 / 0.75)
