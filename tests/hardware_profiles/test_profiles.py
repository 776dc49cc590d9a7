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


def test_invalid_profile_file_names_field(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nintra_op_threads: 0\n")
    with pytest.raises(
        ConfigError, match=r"bad.yaml: intra_op_threads .*greater than or equal to 1"
    ):
        HardwareProfile.from_yaml(path)


def test_profile_needs_fp32(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nprecisions: [int8]\n")
    with pytest.raises(ConfigError, match="precisions must include 'fp32'"):
        HardwareProfile.from_yaml(path)


def test_unknown_profile() -> None:
    with pytest.raises(ConfigError, match="valid: cpu-ort, cpu-ort-1t"):
        get_profile("gpu-magic")
