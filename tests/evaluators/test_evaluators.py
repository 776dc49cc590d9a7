from __future__ import annotations

import numpy as np
import torch

from tightfit.evaluators import evaluate_accuracy, input_feed, measure_latency, predict, size_mb
from tightfit.evaluators.latency import bootstrap_ci
from tightfit.task import top1_accuracy


def test_accuracy_in_onnxruntime_equals_torch(tiny_model, tiny_ctx, digits) -> None:
    with torch.no_grad():
        logits = tiny_model(torch.from_numpy(digits.validation["image"])).numpy()
    expected = top1_accuracy(logits, digits.targets)
    assert evaluate_accuracy(tiny_ctx.baseline_onnx, digits) == expected
    assert predict(tiny_ctx.baseline_onnx, digits.validation).shape == (len(digits.targets), 10)


def test_size_is_the_file_size(tiny_ctx) -> None:
    assert size_mb(tiny_ctx.baseline_onnx) == tiny_ctx.baseline_onnx.stat().st_size / 1e6


def test_latency_protocol_records_interleaved_rounds(tiny_ctx, fast_profile) -> None:
    feed = input_feed({"image": (1, 16, 16)}, {"image": "float32"}, fast_profile, seed=0)
    assert feed["image"].shape == (1, 1, 16, 16)  # the profile's batch size
    r = measure_latency(
        tiny_ctx.baseline_onnx, tiny_ctx.baseline_onnx, fast_profile, feed, baseline_ref_ms=2.0
    )
    assert r.rounds == 3 and r.iters_per_block >= 2
    assert r.ratio_ci[0] <= r.ratio <= r.ratio_ci[1]
    assert r.latency_ms == r.ratio * 2.0 and r.speedup == 1 / r.ratio
    assert r.p90_ms >= r.median_ms > 0
    assert r.environment["intra_op_threads"] == "2" and r.environment["onnxruntime"]


def test_input_shapes_from_profile_override(fast_profile) -> None:
    p = fast_profile.model_copy(update={"batch_size": 4, "input_shapes": {"tokens": [128]}})
    feed = input_feed(
        {"tokens": (64,), "mask": (64,)}, {"tokens": "int64", "mask": "int64"}, p, seed=0
    )
    assert feed["tokens"].shape == (4, 128) and feed["mask"].shape == (4, 64)


def test_bootstrap_ci_of_constant_is_the_constant() -> None:
    assert bootstrap_ci(np.full(7, 0.5), seed=0) == (0.5, 0.5)
    lo, hi = bootstrap_ci(np.arange(1.0, 12.0), seed=0)
    assert lo < np.median(np.arange(1.0, 12.0)) < hi


def test_disturbed_measurements_are_repeated(tiny_ctx, fast_profile) -> None:
    feed = input_feed({"image": (1, 16, 16)}, {"image": "float32"}, fast_profile, seed=0)
    base = tiny_ctx.baseline_onnx
    # a reference far below any real latency: every attempt looks disturbed
    slow = measure_latency(base, base, fast_profile, feed, baseline_ref_ms=1e-6)
    assert slow.attempts == fast_profile.measurement.max_attempts and slow.disturbed
    # a reference far above: the first attempt is quiet
    quiet = measure_latency(base, base, fast_profile, feed, baseline_ref_ms=1e6)
    assert quiet.attempts == 1 and not quiet.disturbed
