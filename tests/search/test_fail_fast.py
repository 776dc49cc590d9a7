"""A search whose first trials all fail for the same reason stops instead of burning its budget."""

from __future__ import annotations

from pathlib import Path

import pytest
from optuna.trial import TrialState

from tests.helpers import tightfit
from tightfit.config import load_config
from tightfit.keys import TrialAttr
from tightfit.search._driver import FAIL_FAST
from tightfit.search._tell import error_kind as _error_kind
from tightfit.studies import load_study

pytestmark = pytest.mark.slow


def test_error_kinds_ignore_numbers_and_hashes() -> None:
    a = "candidate was made for base model 3f2a9c1d0e, but the model callable now returns 9b1c77aa01"
    b = "candidate was made for base model 0000ffff11, but the model callable now returns 12345678ab"
    assert _error_kind(a) == _error_kind(b)
    assert _error_kind(a) != _error_kind("ONNX export failed: RuntimeError: shape '[2, 4]'")


def test_identical_failures_stop_the_search(tmp_path: Path, fast_profile_file: Path) -> None:
    path = tmp_path / "search.yaml"
    path.write_text(
        "name: doomed\n"
        # a model callable that returns new random weights on every call: no worker's model
        # is the one the candidates were made for, so every trial fails the same way
        "model: {callable: 'tests.models:fresh_random_cnn'}\n"
        "data: {callable: digits}\n"
        "space: {prune: {ratios: [0.0, 0.25, 0.5]}}\n"
        f"profiles: ['{fast_profile_file}']\n"
        f"workdir: '{tmp_path / 'work'}'\n"
        "n_trials: 30\nconcurrency: 2\nsensitivity: {enabled: false}\nray: {num_cpus: 2}\n"
        # random weights: no pre-flight accuracy check may stop the search before its trials
        "constraints: {max_accuracy_drop: 1.0}\nrecovery: {batchnorm: false}\n"
    )
    result = tightfit("search", str(path))
    assert result.returncode == 2, result.stderr
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("tightfit: error:")]
    assert len(errors) == 1 and "all failed with the same error" in errors[0], result.stderr
    assert "now returns" in errors[0]  # the reason itself, so the user can fix it
    study = load_study(load_config(path), "cpu-ort-fast")
    counted = [
        t
        for t in study.get_trials(states=(TrialState.FAIL,))
        if not t.user_attrs.get(TrialAttr.INTERRUPTED)
    ]
    assert FAIL_FAST <= len(counted) < 30  # stopped well before the budget
    assert not study.get_trials(states=(TrialState.COMPLETE,))
