"""The built-in metrics a data callable names (``metric`` and ``extra_metrics``)."""

from __future__ import annotations

import numpy as np
import pytest

from tightfit.task import METRICS


def test_top5_accuracy_counts_a_target_among_the_five_highest_outputs() -> None:
    outputs = np.array([[9, 8, 7, 6, 5, 4, 0.0], [9, 8, 7, 6, 5, 4, 0.0]])
    # sample 0's target (index 4) is 5th highest; sample 1's (index 6) is last
    assert METRICS["top5_accuracy"](outputs, np.array([4, 6])) == 0.5
    # fewer than 5 classes: every target is in the top k
    assert METRICS["top5_accuracy"](np.array([[0.1, 0.9]]), np.array([0])) == 1.0


def test_f1_macro_sees_the_class_accuracy_hides() -> None:
    targets = np.array([0] * 9 + [1])
    outputs = np.tile([1.0, 0.0], (10, 1))  # always class 0: accuracy 0.9
    assert METRICS["accuracy"](outputs, targets) == pytest.approx(0.9)
    assert METRICS["f1_macro"](outputs, targets) == pytest.approx((2 * 0.9 / 1.9 + 0) / 2)
