"""The data callable's checks: what a mismatch between calibration and validation says."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tightfit.config import CallableSpec
from tightfit.exceptions import DataError
from tightfit.task import is_token_input, load_data


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


@pytest.mark.parametrize(
    ("sample_shape", "dtype", "tokens"),
    [
        ((12,), "int64", True),
        ((12,), np.dtype(bool), True),
        ((12,), torch.int32, True),
        ((12,), torch.bool, True),
        ((12,), "float32", False),
        ((12,), torch.bfloat16, False),
        ((3, 4), torch.int64, False),
        ((3, 4), "int64", False),
    ],
)
def test_token_inputs_are_one_axis_integer_or_boolean(sample_shape, dtype, tokens) -> None:
    # one rule for the data check, the export's sequence axis and the latency feed
    assert is_token_input(sample_shape, dtype) is tokens
