"""Architecture signatures, the latency cache and the latency predictor, on real exports."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tightfit.evaluators.latency import LatencyResult
from tightfit.evaluators.latency_cache import LatencyCache, architecture_signature, cache_key
from tightfit.evaluators.predictor import (
    FEATURES,
    LatencyPredictor,
    graph_features,
    held_out,
    spearman,
)


def test_signature_ignores_weight_values_but_not_shapes_or_precision(exported) -> None:
    sig = {k: architecture_signature(v) for k, v in exported.items()}
    assert exported[1, "base"] != exported[2, "base"]  # other weights ...
    for name in ("base", "prune", "int8"):
        assert sig[1, name] == sig[2, name]  # ... same architecture
    assert len({sig[1, "base"], sig[1, "prune"], sig[1, "int8"]}) == 3


def test_cache_round_trip_rescales_to_the_reference(tmp_path, fast_profile) -> None:
    cache = LatencyCache(tmp_path)
    result = LatencyResult(
        latency_ms=2.0,
        ratio=0.5,
        ratio_ci=(0.45, 0.55),
        speedup=2.0,
        median_ms=1.0,
        p90_ms=1.1,
        baseline_median_ms=2.0,
        rounds=12,
        iters_per_block=10,
        samples_ms={"candidate": [[1.0]], "baseline": [[2.0]]},
    )
    env = {"cpu": "x", "onnxruntime": "1", "clocks_sm": "1980 MHz"}
    key = cache_key("a", "b", fast_profile, env)
    assert cache.get(key, 3.0) is None
    cache.put(key, result)
    hit = LatencyCache(tmp_path).get(key, 3.0)  # another process / search opens the same file
    assert hit is not None and hit.latency_ms == 1.5 and hit.ratio_ci == (0.45, 0.55)
    assert hit.samples_ms == {}  # raw samples stay with the trial that measured them
    # clocks are volatile and not part of the key; threads and the runtime are
    assert cache_key("a", "b", fast_profile, {**env, "clocks_sm": "345 MHz"}) == key
    two = fast_profile.model_copy(update={"intra_op_threads": 1})
    assert cache_key("a", "b", two, env) != key
    assert cache_key("a", "b", fast_profile, {**env, "onnxruntime": "2"}) != key
    # how the graph was quantized is in its signature, not in how it is measured
    assert cache_key("a", "b", fast_profile.with_int8_format("dynamic"), env) == key
    assert len(cache) == 1


def test_features_follow_the_compression(exported) -> None:
    f = {k[1]: graph_features(v) for k, v in exported.items() if k[0] == 1}
    assert f["base"]["mmac_float"] > 0 and f["base"]["mmac_int8"] == 0
    assert f["prune"]["mmac_float"] < 0.6 * f["base"]["mmac_float"]
    assert f["int8"]["mmac_int8"] > 0.5 * f["base"]["mmac_float"]
    assert f["int8"]["mmac_float"] < f["base"]["mmac_float"]


def test_predictor_fits_non_negative_costs() -> None:
    rng = np.random.default_rng(0)
    truth = {
        "one": 0.05,
        "mmac_float": 0.02,
        "mmac_int8": 0.005,
        "mmac_int4": 0.0,
        "n_ops": 0.003,
        "weight_mb": 0.01,
    }
    predictor = LatencyPredictor()
    assert predictor.predict(dict.fromkeys(FEATURES, 1.0)) is None  # nothing to fit yet
    points = []
    for _ in range(20):
        f = {"one": 1.0, **{k: float(rng.uniform(0, 10)) for k in FEATURES[1:]}}
        y = sum(truth[k] * f[k] for k in FEATURES)
        predictor.add(f, y)
        points.append((f, y))
    predictor.add(points[0][0], math.nan)  # a failed measurement is ignored
    assert len(predictor) == 20
    preds = [predictor.predict(f) for f, _ in points]
    assert np.allclose(preds, [y for _, y in points], rtol=1e-6)
    assert spearman(preds, [y for _, y in points]) == pytest.approx(1.0)
    assert math.isnan(spearman([1.0, 2.0], [1.0, 2.0]))

    # leave-one-out: each point predicted by a fit on the others alone
    features, latency = [f for f, _ in points], [y for _, y in points]
    assert np.allclose(held_out(features, latency), latency, rtol=1e-6)
    wrong = [*latency[:-1], latency[-1] * 10]  # the last point off the line: only its own
    loo = held_out(features, wrong)  # prediction, from the others, stays on the line
    assert loo[-1] == pytest.approx(latency[-1], rel=1e-6)
    assert abs(loo[0] - latency[0]) > 1e-3  # the others' fits include the outlier
    assert held_out(features[:3], latency[:3]) == [None, None, None]  # 2 others: no fit
    partial = [*features[:4], {"one": 1.0}]  # a candidate without the predictor's inputs
    assert held_out(partial, latency[:5])[-1] is None


def test_token_features_count_the_measured_sequence_length(tmp_path) -> None:
    """Batch and sequence are symbolic in the export; the features count them at the shapes
    latency is measured at, not at 1."""
    from tests import models
    from tightfit.kernels import export_onnx

    ids = torch.ones(2, 16, dtype=torch.int64)
    names = ("input_ids", "attention_mask")
    path = export_onnx(models.tiny_bert(), (ids, ids), names, tmp_path / "t.onnx")
    onnx_bytes = path.read_bytes()

    def at(length: int) -> float:
        return graph_features(onnx_bytes, dict.fromkeys(names, (1, length)))["mmac_float"]

    assert at(64) > 6 * at(8)  # the projections scale with the length (attention faster)
    assert graph_features(onnx_bytes)["mmac_float"] < at(8)  # unknown dimensions: 1 each
