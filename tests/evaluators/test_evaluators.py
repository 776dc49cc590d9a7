from __future__ import annotations

import numpy as np
import torch

from tightfit.evaluators import (
    evaluate_accuracy,
    input_feed,
    measure_jointly,
    measure_latency,
    predict,
    size_mb,
)
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
    # each model ran in the protocol's sessions, taken in turn by the rounds
    assert r.environment["sessions_per_model"] == str(fast_profile.measurement.sessions)


def test_input_shapes_from_profile_override(fast_profile) -> None:
    shapes, dtypes = {"tokens": (64,), "mask": (64,)}, {"tokens": "int64", "mask": "int64"}
    p = fast_profile.model_copy(
        update={"batch_size": 4, "sequence_length": None, "input_shapes": {"tokens": [128]}}
    )
    feed = input_feed(shapes, dtypes, p, seed=0)
    assert feed["tokens"].shape == (4, 128) and feed["mask"].shape == (4, 64)
    # the profile's sequence length applies to token inputs; input_shapes still wins
    feed = input_feed(shapes, dtypes, p.model_copy(update={"sequence_length": 32}), seed=0)
    assert feed["tokens"].shape == (4, 128) and feed["mask"].shape == (4, 32)


def test_bootstrap_ci_of_constant_is_the_constant() -> None:
    assert bootstrap_ci(np.full(7, 0.5), seed=0) == (0.5, 0.5)
    lo, hi = bootstrap_ci(np.arange(1.0, 12.0), seed=0)
    assert lo < np.median(np.arange(1.0, 12.0)) < hi


def test_bootstrap_over_sessions_includes_their_disagreement() -> None:
    # two sessions whose rounds agree within themselves (+-0.5%) but read 4% apart
    rng = np.random.default_rng(0)
    values = np.r_[rng.normal(1.00, 0.005, 10), rng.normal(1.04, 0.005, 10)]
    groups = np.r_[np.zeros(10), np.ones(10)]
    lo, hi = bootstrap_ci(values, seed=0, groups=groups)
    assert lo < 1.005 and hi > 1.035  # reaches each session's own reading
    # sessions that agree: hardly wider than rounds alone
    same = rng.normal(1.0, 0.005, 20)
    plain, both = bootstrap_ci(same, seed=0), bootstrap_ci(same, seed=0, groups=groups)
    assert (both[1] - both[0]) < 2 * (plain[1] - plain[0])
    assert bootstrap_ci(same, seed=0, groups=np.zeros(20)) == plain  # one session: rounds alone


def test_disturbed_measurements_are_repeated(tiny_ctx, fast_profile) -> None:
    feed = input_feed({"image": (1, 16, 16)}, {"image": "float32"}, fast_profile, seed=0)
    base = tiny_ctx.baseline_onnx
    # a reference far below any real latency: every attempt looks disturbed
    slow = measure_latency(base, base, fast_profile, feed, baseline_ref_ms=1e-6)
    assert slow.attempts == fast_profile.measurement.max_attempts and slow.disturbed
    # a reference far above: the first attempt is quiet
    quiet = measure_latency(base, base, fast_profile, feed, baseline_ref_ms=1e6)
    assert quiet.attempts == 1 and not quiet.disturbed


def _protocol(profile, **update):
    return profile.model_copy(update={"measurement": profile.measurement.model_copy(update=update)})


def test_rounds_are_added_until_the_interval_is_narrow(tiny_ctx, fast_profile) -> None:
    feed = input_feed({"image": (1, 16, 16)}, {"image": "float32"}, fast_profile, seed=0)
    base = tiny_ctx.baseline_onnx
    loose = _protocol(fast_profile, rounds=3, max_rounds=9, target_ci=10.0)
    assert measure_latency(base, base, loose, feed).rounds == 3  # narrow enough at once
    # an interval this narrow is never reached on real timings: stops at max_rounds
    strict = _protocol(fast_profile, rounds=3, max_rounds=9, target_ci=1e-9, budget_s=60)
    r = measure_latency(base, base, strict, feed)
    ran = r.rounds + r.rounds_dropped
    if r.disturbed:  # others held the pinned CPUs all along (a busy CI machine): rounds are
        assert ran == r.rounds == 2 * 9  # dropped until the cap of twice max_rounds, then all used
    else:  # 9 undisturbed rounds, or fewer once the cap stops the rounds dropped for contention
        assert r.rounds == 9 or (r.rounds < 9 and ran == 2 * 9)
    # every round run is kept in the samples, those dropped (another process took the CPUs) too
    assert [len(b) for b in r.samples_ms["candidate"]] == [r.iters_per_block] * ran
    assert len(r.samples_ms["baseline"]) == ran
    # ... or stops when the time budget is spent
    short = _protocol(fast_profile, rounds=3, max_rounds=1000, target_ci=1e-9, budget_s=0.01)
    assert 3 <= measure_latency(base, base, short, feed).rounds < 1000


def test_environment_fingerprint_and_pinning(tiny_ctx, fast_profile) -> None:
    import os

    feed = input_feed({"image": (1, 16, 16)}, {"image": "float32"}, fast_profile, seed=0)
    r = measure_latency(tiny_ctx.baseline_onnx, tiny_ctx.baseline_onnx, fast_profile, feed)
    env = r.environment
    assert env["cpu"] and env["cpu_count"] == str(os.cpu_count())
    assert (
        env["shapes"] == "image=1x1x16x16" and env["execution_provider"] == "CPUExecutionProvider"
    )
    assert "spinning=off" in env["session_options"]
    if hasattr(os, "sched_setaffinity"):
        allowed = sorted(os.sched_getaffinity(0))
        assert env["pinned_cpus"] == ",".join(map(str, allowed[: fast_profile.intra_op_threads]))
        assert sorted(os.sched_getaffinity(0)) == allowed  # restored afterwards


def test_fp16_profile_exports_an_fp16_graph(tiny_model, digits, fast_profile, tmp_path) -> None:
    import onnx

    from tests.conftest import make_ctx
    from tightfit.kernels import compress
    from tightfit.spaces import Candidate

    fp16 = fast_profile.model_copy(update={"float_precision": "fp16", "precisions": ["fp16"]})
    ctx = make_ctx(tiny_model, digits, fp16, tmp_path)
    out = compress(tiny_model, Candidate(base_model="m"), ctx, tmp_path / "c")
    model = onnx.load(str(out.onnx_path))
    dtypes = {i.data_type for i in model.graph.initializer if len(i.dims) > 1}
    assert dtypes == {onnx.TensorProto.FLOAT16}
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # fp32 io
    fp32_acc = evaluate_accuracy(ctx.baseline_onnx, digits)
    assert abs(evaluate_accuracy(out.onnx_path, digits) - fp32_acc) <= 0.01


def _conv_net(path, channels: int) -> None:
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, channels, 3, padding=1),
        torch.nn.Conv2d(channels, channels, 3, padding=1),
    ).eval()
    torch.onnx.export(
        net, (torch.zeros(1, 1, 32, 32),), str(path), input_names=["image"], dynamo=False
    )


def test_joint_measurement_runs_every_candidate_in_the_same_rounds(tmp_path, fast_profile) -> None:
    small, large = tmp_path / "small.onnx", tmp_path / "large.onnx"
    _conv_net(small, 4)
    _conv_net(large, 64)  # about 250 times the multiply-accumulates of the small one
    feed = input_feed({"image": (1, 32, 32)}, {"image": "float32"}, fast_profile, seed=0)
    results = measure_jointly([large, small], small, fast_profile, feed, baseline_ref_ms=1e6)
    assert len(results) == 2
    slow, same = results
    assert slow.ratio > 3 * same.ratio  # each candidate got its own ratio, in the given order
    assert same.ratio_ci[0] <= same.ratio <= same.ratio_ci[1]
    # one set of rounds: the same baseline blocks, one block of each candidate per round
    assert slow.samples_ms["baseline"] == same.samples_ms["baseline"]
    assert slow.rounds == same.rounds >= 3 and slow.rounds_dropped == same.rounds_dropped
    assert len(slow.samples_ms["candidate"]) == slow.rounds + slow.rounds_dropped
    assert slow.environment["measured_jointly_with"] == "1"
    assert slow.attempts == same.attempts == 1 and not slow.disturbed
    assert measure_jointly([], small, fast_profile, feed) == []
    # alone, a candidate is measured as before, without the joint tag
    alone = measure_latency(large, small, fast_profile, feed)
    assert alone.ratio > 3 and "measured_jointly_with" not in alone.environment


def test_calibration_measures_the_model_against_itself(tiny_ctx, fast_profile) -> None:
    from tightfit.evaluators.calibrate import calibrate, calibrated_profile

    feed = input_feed({"image": (1, 16, 16)}, {"image": "float32"}, fast_profile, seed=0)
    result = calibrate(fast_profile, tiny_ctx.baseline_onnx, feed, repeats=2, max_rounds=8)
    assert result.repeats == 2 and result.rounds_measured == 8
    assert sorted(result.ci_half_width) == [3, 4, 6, 8]  # the grid up to max_rounds
    assert result.recommended_rounds == 8  # never fewer than 8; 8 is all that was measured
    assert result.model_ms > 0 and result.aa_ratio_error < 0.5  # A/A: the ratio is near 1
    saved = calibrated_profile(fast_profile, result)
    assert saved.measurement.rounds == 8 and saved.measurement.max_rounds >= 8
    assert saved.calibration["recommended_rounds"] == 8
