"""Staged accuracy on real ONNX Runtime sessions: the subset first, the rest only if needed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tightfit.evaluators import evaluate_accuracy
from tightfit.evaluators.accuracy import clearly_infeasible, staged_accuracy, validation_subset
from tightfit.kernels import export_onnx
from tightfit.objectives import OBJECTIVES
from tightfit.task import TaskData

ACCURACY, PERPLEXITY = OBJECTIVES["accuracy"], OBJECTIVES["perplexity"]


def _fit(model: torch.nn.Module, data: TaskData) -> torch.nn.Module:
    """Some steps on validation images: well above chance, deterministic."""
    torch.manual_seed(0)
    x = torch.from_numpy(data.validation["image"][:300])
    y = torch.from_numpy(data.targets[:300])
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(120):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.fixture()
def exported(tiny_model, digits: TaskData, tmp_path):
    good = _fit(tiny_model, digits)
    good_path = export_onnx(good, digits.example_inputs(), digits.input_names, tmp_path / "g.onnx")
    with torch.no_grad():
        good.fc.weight.mul_(-1.0)  # the classifier inverted: far below the baseline
    bad_path = export_onnx(good, digits.example_inputs(), digits.input_names, tmp_path / "b.onnx")
    return good_path, bad_path


def test_subset_is_fixed_and_bounded() -> None:
    a = validation_subset(597, 0.25, 100)
    assert a is not None and len(a) == 149 and np.all(np.diff(a) > 0)
    assert np.array_equal(a, validation_subset(597, 0.25, 100))
    assert len(validation_subset(597, 0.05, 100)) == 100  # the minimum wins
    assert validation_subset(80, 0.25, 100) is None  # fewer samples than the minimum: all


def test_clearly_infeasible_allows_for_the_subset_noise() -> None:
    # 5 points over a 1-point limit: clear on 1,000 samples, not on 50
    assert clearly_infeasible(ACCURACY, 0.85, 0.91, 1000, 0.01, z=2.0)
    assert not clearly_infeasible(ACCURACY, 0.85, 0.91, 50, 0.01, z=2.0)
    assert not clearly_infeasible(ACCURACY, 0.905, 0.91, 1000, 0.01, z=2.0)
    # lower is better, relative: +5% allowed; a subset stops only past twice that at z = 2
    assert not clearly_infeasible(PERPLEXITY, 21.9, 20.0, 1000, 0.05, z=2.0)  # +9.5%
    assert clearly_infeasible(PERPLEXITY, 22.1, 20.0, 1000, 0.05, z=2.0)  # +10.5%
    assert not clearly_infeasible(PERPLEXITY, 15.0, 20.0, 10, 0.05, z=2.0)  # better


def test_staged_accuracy_stops_a_broken_model_and_completes_a_good_one(
    exported, digits: TaskData
) -> None:
    good, bad = exported
    subset = validation_subset(len(digits.targets), 0.25, 100)
    assert subset is not None
    base_sub = evaluate_accuracy(good, digits, subset=subset)
    assert base_sub > 0.5  # the fitted model is well above chance
    full = evaluate_accuracy(good, digits)
    accuracy, stage, _ = staged_accuracy(good, digits, subset, base_sub, ACCURACY, 0.01, 2.0)
    assert stage == "full" and accuracy == pytest.approx(full)  # same as one full pass
    accuracy, stage, _ = staged_accuracy(bad, digits, subset, base_sub, ACCURACY, 0.01, 2.0)
    assert stage == "subset"
    assert accuracy == pytest.approx(evaluate_accuracy(bad, digits, subset=subset))
