"""Each private API tightfit uses, through its one wrapper: these fail when a dependency moves
it, before a search would."""

from __future__ import annotations

import numpy as np
import optuna
import pytest

from tightfit._optuna_private import hypervolume, set_running_trial_attr
from tightfit._ort_private import quantize_matmul_4bits


def test_optuna_hypervolume() -> None:
    points = np.array([[0.5, 0.5], [0.25, 0.75], [0.75, 0.75]])  # the last is dominated
    assert hypervolume(points, np.ones(2)) == pytest.approx(0.3125)


def test_optuna_attribute_on_a_trial_left_running() -> None:
    study = optuna.create_study()
    study.ask()  # a driver that crashed here leaves the trial RUNNING, with no Trial object
    [frozen] = study.get_trials()
    set_running_trial_attr(study, frozen, "interrupted", True)
    assert study.get_trials()[0].user_attrs == {"interrupted": True}


def test_onnxruntime_4bit_quantizer_packs_symmetric_blocks() -> None:
    k, n, block = 32, 2, 32
    weight = np.linspace(-1.0, 1.0, k * n, dtype=np.float32).reshape(k, n)
    packed = np.zeros((n, 1, block // 2), dtype=np.uint8)
    scales = np.zeros((n, 1), dtype=np.float32)
    zero_points = np.zeros((n, 1), dtype=np.uint8)
    quantize_matmul_4bits(packed, weight, scales, zero_points, block, n, k, True)
    codes = np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(n, block).astype(np.float32)
    restored = ((codes - 8.0) * scales).T
    step = np.abs(scales).max()
    # symmetric blocks: the largest |w| of a column is code 0 exactly; the other end of the
    # range stops a step short (codes -8..7), everything else rounds to within half a step
    assert np.allclose(restored[np.abs(weight).argmax(axis=0), [0, 1]], [-1.0, 1.0])
    assert np.abs(restored - weight).max() <= step + 1e-6
    assert np.median(np.abs(restored - weight)) <= step / 2 + 1e-6


def test_torch_dynamo_registry_is_built_once_per_opset() -> None:
    from torch.onnx._internal.exporter._registration import ONNXRegistry

    from tightfit._torch_private import torchlib_registry_cached

    original = ONNXRegistry.__dict__["from_torchlib"]
    with torchlib_registry_cached():
        first = ONNXRegistry.from_torchlib(opset_version=18)
        assert ONNXRegistry.from_torchlib(opset_version=18) is first
        assert ONNXRegistry.from_torchlib(opset_version=20) is not first
        assert first.opset_version == 18 and first.functions  # a real, filled table
    assert ONNXRegistry.__dict__["from_torchlib"] is original  # torch's own, outside the block
