"""A small search on a GPU profile, export, reload, re-measure (skips without a usable GPU)."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
from optuna.trial import TrialState

from tests.helpers import search_config
from tightfit.evaluators.runtimes import runtime_missing
from tightfit.hardware_profiles import get_profile
from tightfit.runs import run_search
from tightfit.runs.export import export

pytestmark = [pytest.mark.gpu, pytest.mark.slow]


def test_search_export_and_remeasure_on_the_gpu(tmp_path: Path) -> None:
    profile = get_profile("gpu-torch-cuda-fp16")
    if runtime_missing(profile):
        pytest.skip(runtime_missing(profile))
    fast = profile.measurement.model_copy(update={"warmup_s": 0.05, "rounds": 8, "max_rounds": 16})
    path = tmp_path / "gpu-fast.yaml"
    path.write_text(profile.model_copy(update={"name": "gpu-fast", "measurement": fast}).to_yaml())
    config = search_config(tmp_path / "work", path, n_trials=8, ray={})
    search = run_search(config)
    [outcome] = search.profiles
    # Staged evaluation stops candidates that miss the accuracy constraint on a subset (PRUNED);
    # every other trial completes, none fails.
    assert not outcome.study.get_trials(states=(TrialState.FAIL,))
    done = outcome.study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    assert len(done) == 8 and not outcome.front.empty
    assert outcome.study.user_attrs["environment"]["gpu"]
    [result] = export(search.workdir, pick="knee", out=tmp_path / "engines")
    model = onnx.load(str(result.path))  # reload: an fp16 graph with fp32 inputs and outputs
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer)
    manifest = json.loads(result.manifest.read_text())
    assert (
        manifest["latency"]["environment"]["gpu"] == outcome.study.user_attrs["environment"]["gpu"]
    )
    assert result.measured["latency_ms"] > 0
    print(
        "GPU knee:",
        {"logged": result.logged, "measured": result.measured, "change": result.latency_change},
    )
