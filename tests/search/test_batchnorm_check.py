"""A search refuses BatchNorm recalibration when it alone breaks the accuracy constraint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.helpers import search_config
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


def _config(tmp_path: Path, profile: Path, recovery: dict):
    return search_config(
        tmp_path / "work",
        profile,
        name="bncheck",
        data={"callable": "tests.search.test_batchnorm_check:noise_calibration"},
        space={
            "prune": {"ratios": [0.0, 0.25]},
            "lowrank": {"enabled": False},
            "quantize": {"enabled": False},
        },
        recovery=recovery,
        n_trials=3,
        concurrency=1,
        seeds={"uniform": 1, "global_magnitude": 0},
    )


def test_recalibrating_on_unrepresentative_data_is_refused(tmp_path, fast_profile_file) -> None:
    config = _config(tmp_path, fast_profile_file, {"batchnorm": True})
    with pytest.raises(ConfigError, match=r"recovery\.batchnorm: .* recovery\.batchnorm: false"):
        run_search(config)
    # refused before the baseline was saved: a rerun checks again rather than going on
    study = load_study(config, "cpu-ort-fast", config.workdir_path)
    assert "baseline_latency_ms" not in study.user_attrs
    with pytest.raises(ConfigError, match=r"recovery\.batchnorm"):
        run_search(config)
    # with it off (and reconstruction on) the same search runs
    config = _config(
        tmp_path / "off", fast_profile_file, {"batchnorm": False, "reconstruct": {"enabled": True}}
    )
    outcome = run_search(config)
    [profile] = outcome.profiles
    assert profile.n_failed == 0 and "baseline_latency_ms" in profile.study.user_attrs
