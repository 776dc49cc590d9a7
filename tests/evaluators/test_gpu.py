"""GPU runtimes: torch-cuda (CUDA graphs), ONNX Runtime CUDA, TensorRT. Skip where absent."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.conftest import make_ctx
from tightfit.evaluators import input_feed, measure_latency
from tightfit.evaluators.runtimes import runtime_missing
from tightfit.hardware_profiles import get_profile
from tightfit.kernels import compress, discover_units
from tightfit.runs.plans import PlanMismatchError, check_plan
from tightfit.spaces import CompressionSpace


def _fast(profile):
    m = profile.measurement.model_copy(
        update={"warmup_s": 0.05, "rounds": 8, "max_rounds": 16, "min_block_s": 0.005}
    )
    return profile.model_copy(update={"measurement": m})


def _skip_unless_runs(name: str):
    profile = get_profile(name)
    missing = runtime_missing(profile)
    if missing:
        pytest.skip(missing)
    return _fast(profile)


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["gpu-torch-cuda-fp16", "gpu-ort-cuda-fp16", "gpu-trt-fp16"])
def test_gpu_runtime_measures_a_pruned_candidate(name, digits, tmp_path) -> None:
    from tests import models

    profile = _skip_unless_runs(name)
    model = models.tiny_resnet()
    ctx = make_ctx(model, digits, profile, tmp_path)
    space = CompressionSpace(discover_units(model, ctx, _space()), "m", 0)
    base = compress(model, space.baseline(), ctx, tmp_path / "base").onnx_path
    pruned = compress(model, space.uniform(prune_ratio=0.5), ctx, tmp_path / "pruned").onnx_path
    feed = input_feed({"image": (1, 16, 16)}, {"image": "float32"}, profile, seed=0)
    r = measure_latency(pruned, base, profile, feed, baseline_ref_ms=None)
    assert 8 <= r.rounds <= 16 and r.ratio_ci[0] <= r.ratio <= r.ratio_ci[1]
    assert r.median_ms > 0 and r.p99_ms >= r.p90_ms >= r.median_ms
    env = r.environment
    assert env["gpu"] == torch.cuda.get_device_name(0) and env["driver_version"]
    assert env["float_precision"] == "fp16"
    same = measure_latency(base, base, profile, feed)  # A/A: the ratio is 1 within noise
    assert abs(same.ratio - 1.0) < 0.1, same.ratio


def _space():
    from tightfit.config import SpaceSpec

    return SpaceSpec.model_validate(
        {
            "prune": {"ratios": [0.0, 0.5]},
            "lowrank": {"enabled": False},
            "quantize": {"enabled": False},
        }
    )


@pytest.mark.gpu
def test_cuda_graph_runner_matches_onnxruntime_cpu(digits, tmp_path) -> None:
    from tests import models
    from tightfit.evaluators import predict
    from tightfit.evaluators.runtimes.torch_cuda import TorchCudaRunner

    profile = _skip_unless_runs("gpu-torch-cuda-fp16")
    model = models.tiny_resnet()
    ctx = make_ctx(model, digits, profile, tmp_path)
    space = CompressionSpace(discover_units(model, ctx, _space()), "m", 0)
    path = compress(model, space.baseline(), ctx, tmp_path / "b").onnx_path
    feed = {"image": digits.validation["image"][:1]}
    runner = TorchCudaRunner(path, profile, feed)
    runner.run()
    gpu = runner.out.float().cpu().numpy()
    cpu = predict(path, feed)
    assert np.allclose(gpu, cpu, atol=2e-2), np.abs(gpu - cpu).max()


def test_plan_built_elsewhere_is_refused() -> None:
    here = {
        "gpu": "NVIDIA H100 80GB HBM3",
        "gpu_capability": "9.0",
        "tensorrt": "10.13",
        "cuda": "13.0",
        "driver_version": "580.159.04",
    }
    check_plan({"plan": dict(here)}, here)  # same machine: accepted
    other = {**here, "gpu": "NVIDIA A100-SXM4-40GB", "tensorrt": "11.4"}
    with pytest.raises(
        PlanMismatchError, match="gpu: plan 'NVIDIA A100-SXM4-40GB', here 'NVIDIA H100"
    ):
        check_plan({"plan": other}, here)
    with pytest.raises(PlanMismatchError, match="rebuild it here with 'tightfit export'"):
        check_plan({}, here)


@pytest.mark.gpu
@pytest.mark.tensorrt
def test_tensorrt_plan_is_built_tagged_and_refused_elsewhere(tmp_path, digits) -> None:
    """A real plan: built from an exported model, loaded back here, refused once its manifest
    says another GPU, and refused once the file no longer matches its sha256."""
    profile = _skip_unless_runs("gpu-trt-fp16")
    from tests import models
    from tightfit.evaluators.runtimes.tensorrt import build_engine
    from tightfit.kernels import export_onnx
    from tightfit.runs._files import sha256
    from tightfit.runs.plans import load_plan, plan_tags

    onnx_path = export_onnx(
        models.tiny_resnet(), digits.example_inputs(), digits.input_names, tmp_path / "m.onnx"
    )
    feed = input_feed({"image": (1, 16, 16)}, {"image": "float32"}, profile, seed=0)
    plan = tmp_path / "model.plan"
    plan.write_bytes(build_engine(onnx_path, profile, feed))
    assert plan.stat().st_size > 0
    manifest = {"files": {"model.plan": {"sha256": sha256(plan)}}, "plan": plan_tags()}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    assert load_plan(tmp_path) == plan.read_bytes()  # built here: accepted
    elsewhere = {**manifest, "plan": {**manifest["plan"], "gpu": "NVIDIA A100-SXM4-40GB"}}
    (tmp_path / "manifest.json").write_text(json.dumps(elsewhere))
    with pytest.raises(PlanMismatchError, match="gpu: plan 'NVIDIA A100-SXM4-40GB'"):
        load_plan(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    plan.write_bytes(plan.read_bytes() + b"x")
    with pytest.raises(Exception, match="does not match the sha256"):
        load_plan(tmp_path)


def test_gpu_profile_without_a_gpu_is_a_clear_error() -> None:
    from tightfit.evaluators.runtimes import require_runtime
    from tightfit.exceptions import ConfigError

    profile = get_profile("gpu-torch-cuda-fp16")
    if runtime_missing(profile) is None:
        pytest.skip("this machine can run the GPU profile")
    with pytest.raises(ConfigError, match="gpu-torch-cuda-fp16' cannot run here: "):
        require_runtime(profile)


def test_the_polygraphy_calls_the_tensorrt_build_makes_exist() -> None:
    """TensorRT cannot run here, but the Polygraphy API it is built through can be checked:
    every loader and keyword ``build_engine`` uses (a rename in Polygraphy fails this)."""
    import inspect

    pytest.importorskip("polygraphy")
    from polygraphy.backend.trt import (
        CreateConfig,
        EngineBytesFromNetwork,
        NetworkFromOnnxBytes,
        Profile,
    )

    assert "strongly_typed" in inspect.signature(NetworkFromOnnxBytes.__init__).parameters
    assert "save_timing_cache" in inspect.signature(EngineBytesFromNetwork.__init__).parameters
    common = inspect.signature(CreateConfig.__mro__[1].__init__).parameters
    for name in (
        "profiles",
        "load_timing_cache",
        "memory_pool_limits",
        "builder_optimization_level",
    ):
        assert name in common, name
    shapes = Profile()
    shapes.add("image", min=(1, 1, 8, 8), opt=(1, 1, 8, 8), max=(1, 1, 8, 8))
    assert shapes["image"].opt == (1, 1, 8, 8)
