"""The data callable's checks: what a mismatch between calibration and validation says."""

from __future__ import annotations

import numpy as np
import pytest

from tightfit.config import CallableSpec
from tightfit.exceptions import DataError
from tightfit.task import load_data


def images_of_two_sizes() -> dict:
    return {
        "calibration": {"image": np.zeros((4, 1, 8, 8), np.float32)},
        "validation": {"image": np.zeros((3, 1, 16, 16), np.float32)},
        "targets": np.zeros(3, np.int64),
    }


def tokens_of_two_lengths() -> dict:
    return {
        "calibration": {"ids": np.ones((4, 48), np.int64), "mask": np.ones((4, 48), np.int64)},
        "validation": {"ids": np.ones((3, 64), np.int64), "mask": np.ones((3, 64), np.int64)},
        "targets": np.zeros(3, np.int64),
    }


def test_a_per_sample_shape_mismatch_names_the_input() -> None:
    with pytest.raises(DataError, match=r"input 'image' has per-sample shape \(1, 8, 8\)"):
        load_data(CallableSpec(callable="tests.test_task:images_of_two_sizes"))


def test_token_sequences_may_differ_in_length() -> None:
    data = load_data(CallableSpec(callable="tests.test_task:tokens_of_two_lengths"))
    assert data.calibration["ids"].shape == (4, 48)
    assert data.validation["ids"].shape == (3, 64)
