from __future__ import annotations

from pathlib import Path

import pytest

from tightfit.exceptions import ConfigError
from tightfit.hardware_profiles import HardwareProfile, get_profile, list_profiles


def test_builtin_profiles_listed() -> None:
    assert {"cpu-ort", "cpu-ort-1t"} <= set(list_profiles())


@pytest.mark.parametrize("name", list_profiles())
def test_every_builtin_round_trips(name: str, tmp_path: Path) -> None:
    profile = get_profile(name)
    assert profile.name == name
    assert HardwareProfile.from_json(profile.to_json()) == profile
    path = tmp_path / "p.yaml"
    path.write_text(profile.to_yaml())
    assert HardwareProfile.from_yaml(path) == profile
    assert 32 in profile.bits_allowed


def test_cpu_ort_protocol() -> None:
    p = get_profile("cpu-ort")
    assert p.runtime == "onnxruntime" and p.intra_op_threads == 2 and p.batch_size == 1
    assert p.bits_allowed == [32, 8, 4]
    assert p.quantization.int8_format == "auto"  # a search measures static and dynamic int8


def test_thread_spinning_is_the_profiles_and_reaches_its_sessions(tmp_path: Path) -> None:
    """Off by default (the measurement's choice on shared machines); the LLM profile spins, as
    onnxruntime-genai's generator does; the setting is in the measurement's environment."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper

    from tightfit._ort import make_session
    from tightfit.evaluators.runtimes import environment

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
    path = tmp_path / "identity.onnx"
    onnx.save(helper.make_model(graph), str(path))
    assert not get_profile("cpu-ort").thread_spinning
    assert get_profile("cpu-ort-llm").thread_spinning
    feed = {"x": np.zeros(1, np.float32)}
    for spin in (False, True):
        profile = get_profile("cpu-ort").model_copy(update={"thread_spinning": spin})
        options = make_session(path, profile).get_session_options()
        for pool in ("intra", "inter"):
            key = f"session.{pool}_op.allow_spinning"
            assert options.get_session_config_entry(key) == ("1" if spin else "0")
        assert (
            f"spinning={'on' if spin else 'off'}" in environment(profile, feed)["session_options"]
        )


def test_invalid_profile_file_names_field(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nintra_op_threads: 0\n")
    with pytest.raises(
        ConfigError, match=r"bad.yaml: intra_op_threads .*greater than or equal to 1"
    ):
        HardwareProfile.from_yaml(path)


def test_profile_needs_its_float_precision(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nprecisions: [int8]\n")
    with pytest.raises(ConfigError, match="precisions must include float_precision 'fp32'"):
        HardwareProfile.from_yaml(path)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("runtime: tensorrt", "runtime 'tensorrt' .* needs device: cuda"),
        (
            "runtime: torch-cuda\ndevice: cuda\nprecisions: [fp32, int8]",
            "torch-cuda' runs float graphs only: remove int8/int4",
        ),
        ("measurement: {rounds: 10, max_rounds: 5}", r"max_rounds \(5\) must be at least rounds"),
        ("ray_resources: {GPU: 1}", "'GPU' is not a custom resource; use num_gpus"),
        (
            "runtime: tensorrt\ndevice: cuda\nquantization: {int8_format: auto}",
            "int8_format 'auto' needs runtime onnxruntime .*: set it to static",
        ),
    ],
)
def test_inconsistent_profiles_are_refused(tmp_path: Path, body: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(f"name: x\n{body}\n")
    with pytest.raises(ConfigError, match=message):
        HardwareProfile.from_yaml(path)


def test_gpu_profiles_are_built_in() -> None:
    for name in ("gpu-ort-cuda-fp16", "gpu-torch-cuda-fp16", "gpu-trt-fp16", "gpu-trt-int8"):
        profile = get_profile(name)
        assert profile.is_gpu and profile.num_gpus == 1 and profile.float_precision == "fp16"
    assert get_profile("gpu-trt-int8").quantization.symmetric_activations


def test_unknown_profile() -> None:
    with pytest.raises(
        ConfigError, match="valid: cpu-ort, cpu-ort-1t, cpu-ort-llm, gpu-ort-cuda-fp16"
    ):
        get_profile("gpu-magic")
