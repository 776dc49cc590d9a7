"""A search refuses BatchNorm recalibration when it alone breaks the accuracy constraint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tightfit.config import load_config
from tightfit.examples import digits
from tightfit.exceptions import ConfigError
from tightfit.runs import run_search
from tightfit.studies import load_study

pytestmark = pytest.mark.slow


def noise_calibration() -> dict:
    """The digits task with calibration inputs that look nothing like the training images."""
    data = digits.load_data()
    shape = data["calibration"]["image"].shape
    noise = np.random.default_rng(0).uniform(-8.0, 8.0, shape).astype(np.float32)
    return {**data, "calibration": {"image": noise}}


def _config(tmp_path: Path, profile: Path, recovery: str):
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "search.yaml"
    path.write_text(
        "name: bncheck\n"
        "model: {callable: digits-cnn, kwargs: {width: 8, epochs: 2}}\n"
        "data: {callable: 'tests.search.test_batchnorm_check:noise_calibration'}\n"
        "space: {prune: {ratios: [0.0, 0.25]}, lowrank: {enabled: false}, "
        "quantize: {enabled: false}}\n"
        f"recovery: {recovery}\n"
        f"profiles: ['{profile}']\n"
        f"workdir: '{tmp_path / 'work'}'\n"
        "n_trials: 3\nconcurrency: 1\nseeds: {uniform: 1, global_magnitude: 0}\n"
        "sensitivity: {enabled: false}\nray: {num_cpus: 2}\n"
    )
    return load_config(path)


def test_recalibrating_on_unrepresentative_data_is_refused(tmp_path, fast_profile_file) -> None:
    config = _config(tmp_path, fast_profile_file, "{batchnorm: true}")
    with pytest.raises(ConfigError, match=r"recovery\.batchnorm: .* recovery\.batchnorm: false"):
        run_search(config)
    # refused before the baseline was saved: a rerun checks again rather than going on
    study = load_study(config, "cpu-ort-fast", config.workdir_path)
    assert "baseline_latency_ms" not in study.user_attrs
    with pytest.raises(ConfigError, match=r"recovery\.batchnorm"):
        run_search(config)
    # with it off (and reconstruction on) the same search runs
    config = _config(
        tmp_path / "off", fast_profile_file, "{batchnorm: false, reconstruct: {enabled: true}}"
    )
    outcome = run_search(config)
    [profile] = outcome.profiles
    assert profile.n_failed == 0 and "baseline_latency_ms" in profile.study.user_attrs
