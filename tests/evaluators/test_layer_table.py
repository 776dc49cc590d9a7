"""The per-layer latency table: one-layer models cut from real exports, timed in ONNX Runtime."""

from __future__ import annotations

import onnx
import pytest

from tightfit.evaluators import layer_table
from tightfit.evaluators.latency_cache import LatencyCache
from tightfit.evaluators.predictor import LayerRatioPredictor
from tightfit.hardware_profiles import get_profile

SHAPES = {"image": (1, 1, 16, 16)}


def _ops(model: bytes) -> set[str]:
    return {n.op_type for n in onnx.load_from_string(model).graph.node}


def test_every_compute_layer_becomes_a_static_one_layer_model(exported) -> None:  # noqa: F811
    base = layer_table.layer_models(exported[1, "base"], SHAPES)
    n_compute = sum(
        n.op_type in layer_table.COMPUTE
        for n in onnx.load_from_string(exported[1, "base"]).graph.node
    )
    assert base.skipped == 0 and len(base.keys) == n_compute > 0
    for model in base.models.values():
        onnx.checker.check_model(onnx.load_from_string(model), full_check=True)
        assert len(_ops(model) & layer_table.COMPUTE) == 1
    # the key is the architecture: other weights, same keys; other shapes or precision, others
    assert layer_table.layer_models(exported[2, "base"], SHAPES).keys == base.keys
    pruned = layer_table.layer_models(exported[1, "prune"], SHAPES)
    assert len(pruned.keys) == len(base.keys) and set(pruned.keys) != set(base.keys)
    int8 = layer_table.layer_models(exported[1, "int8"], SHAPES)
    assert not set(int8.keys) & set(base.keys)
    # an int8 layer keeps its precision context: the Q/DQ that the runtime fuses with it
    assert any({"QuantizeLinear", "DequantizeLinear"} <= _ops(m) for m in int8.models.values())


def test_batch_comes_from_the_given_shapes(exported) -> None:  # noqa: F811
    one = layer_table.layer_models(exported[1, "base"], SHAPES)
    four = layer_table.layer_models(exported[1, "base"], {"image": (4, 1, 16, 16)})
    assert len(four.keys) == len(one.keys) and not set(four.keys) & set(one.keys)


def test_table_times_each_shape_once_and_keeps_it(exported, tmp_path) -> None:  # noqa: F811
    profile = get_profile("cpu-ort")
    layers = layer_table.layer_models(exported[1, "prune"], SHAPES)
    cache = LatencyCache(tmp_path)
    table = layer_table.LayerTable(profile, cache)
    total, timed = table.total_ms(layers)
    assert timed == len(layers.models) and total > 0
    assert table.total_ms(layers) == (total, 0)  # in memory: nothing timed again
    again = layer_table.LayerTable(profile, LatencyCache(tmp_path))  # another process, same file
    assert again.total_ms(layers) == (pytest.approx(total), 0)
    other = layer_table.LayerTable(profile.model_copy(update={"intra_op_threads": 1}), cache)
    assert other.total_ms(layers)[1] == len(layers.models)  # other settings: timed anew
    assert layer_table.LayerTable(profile, None).total_ms(layers)[1] == len(layers.models)


def test_applies_to_onnx_runtime_on_cpu_only() -> None:
    assert layer_table.applies(get_profile("cpu-ort"))
    assert not layer_table.applies(get_profile("gpu-ort-cuda-fp16"))


def test_ratio_predictor_scales_the_layer_sum() -> None:
    predictor = LayerRatioPredictor()
    for layer_ms, latency in [(1.0, 0.5), (2.0, 1.2), (4.0, 2.0)]:
        assert predictor.predict({"layer_ms": 1.0}) is None  # fewer than 3 measurements
        predictor.add({"layer_ms": layer_ms}, latency)
    predictor.add({"layer_ms": 3.0}, float("nan"))  # a failed measurement is ignored
    predictor.add({"n_ops": 3.0}, 1.0)  # no layer table for this one: not learned from
    assert len(predictor) == 3
    assert predictor.predict({"layer_ms": 10.0}) == pytest.approx(5.0)  # median ratio 0.5
    assert predictor.predict({"n_ops": 3.0}) is None
