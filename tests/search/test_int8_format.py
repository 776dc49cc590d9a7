"""int8_format auto on MatMul layers, and the standard recipe beside an MLP's front (real
Optuna, Ray, MLflow and ONNX Runtime)."""

from __future__ import annotations

import pytest

from tests.helpers import search_config
from tightfit.runs import run_search

pytestmark = pytest.mark.slow


def test_auto_measures_both_formats_on_matmul_layers(tmp_path, fast_profile_file) -> None:
    config = search_config(
        tmp_path,
        fast_profile_file,
        name="mlp",
        model={"callable": "tests.models:token_mlp"},
        data={"callable": "tests.models:token_data"},
        space={"prune": {"enabled": False}, "lowrank": {"enabled": False}},
        n_trials=3,
        seeds={"uniform": 1, "global_magnitude": 0},
        constraints={"max_accuracy_drop": 1.0},
        sensitivity={"enabled": False},
        latency={"cache_dir": str(tmp_path / "lc")},
    )
    [profile] = run_search(config).profiles
    study = profile.study
    # uniform int8 built and measured both ways once; trials use the faster
    measured = study.user_attrs["int8_formats_measured"]
    assert set(measured) == {"static", "dynamic"}
    assert all(m["latency_ms"] > 0 and 0 <= m["accuracy"] <= 1 for m in measured.values())
    margin = 1 - config.hardware_profiles()[0].measurement.target_ci
    faster = measured["dynamic"]["latency_ms"] < margin * measured["static"]["latency_ms"]
    assert study.user_attrs["int8_format"] == ("dynamic" if faster else "static")
    # every int8 trial engaged all of its planned layers, in the chosen format
    int8 = [
        t.user_attrs["report"]["quantize"]
        for t in study.trials
        if "quantize" in t.user_attrs.get("report", {})
    ]
    assert int8 and all(q["int8_engaged"] == 1.0 for q in int8 if q.get("int8_nodes"))
    # the recipe was measured beside the front: the transformer optimizer fuses the MLP's
    # bias and Gelu (no attention here)
    recipe = study.user_attrs["recipe"]
    assert set(recipe) == {"fp32", "int8-dynamic", "int8-static"}
    assert recipe["fp32"]["fusions"] == {"BiasGelu": 1}
    assert all(r["speedup"] > 0 for r in recipe.values())
