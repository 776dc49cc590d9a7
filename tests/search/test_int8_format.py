"""int8_format auto on MatMul layers, and the standard recipe beside an MLP's front (real
Optuna, Ray, MLflow and ONNX Runtime)."""

from __future__ import annotations

import pytest

from tests.helpers import search_config
from tightfit.runs import run_search

pytestmark = pytest.mark.slow


def test_auto_measures_every_int8_variant_on_matmul_layers(tmp_path, fast_profile) -> None:
    """``int8_format: auto`` with ``activation_type: auto``: uniform int8 built static U8S8,
    static S8S8 and dynamic, each measured once; trials use the fastest within the accuracy
    constraint (by more than target_ci over static U8S8), and the summary says which."""
    q = fast_profile.quantization.model_copy(update={"activation_type": "auto"})
    profile = fast_profile.model_copy(update={"name": "cpu-ort-auto", "quantization": q})
    profile_file = tmp_path / "cpu-ort-auto.yaml"
    profile_file.write_text(profile.to_yaml())
    config = search_config(
        tmp_path,
        profile_file,
        name="mlp",
        model={"callable": "tests.models:token_mlp"},
        data={"callable": "tests.models:token_data"},
        space={"prune": {"enabled": False}, "lowrank": {"enabled": False}},
        n_trials=3,
        seeds={"uniform": 1, "global_magnitude": 0},
        constraints={"max_accuracy_drop": 1.0},
        latency={"cache_dir": str(tmp_path / "lc")},
    )
    [outcome] = run_search(config).profiles
    study = outcome.study
    everything = study.user_attrs["int8_formats_measured"]
    assert set(everything) == {"static", "static_s8s8", "dynamic"}
    # a variant whose int8 does not engage is left out with the reason, not measured: S8S8
    # MatMul runs in float on some ONNX Runtime builds (1.32 on this project's Xeon)
    measured = {n: m for n, m in everything.items() if "error" not in m}
    assert {"static", "dynamic"} <= set(measured)
    for name, m in everything.items():
        if "error" in m:
            assert name == "static_s8s8" and "runs in float" in m["error"]
    assert all(m["latency_ms"] > 0 and 0 <= m["accuracy"] <= 1 for m in measured.values())
    # every variant is feasible here (max_accuracy_drop 1.0): the fastest by the margin wins
    margin = 1 - profile.measurement.target_ci
    fastest = min(measured, key=lambda n: measured[n]["latency_ms"])
    faster = measured[fastest]["latency_ms"] < margin * measured["static"]["latency_ms"]
    choice = fastest if faster else "static"
    assert study.user_attrs["int8_format"] == choice.removesuffix("_s8s8")
    activations = "QInt8" if choice == "static_s8s8" else "QUInt8"
    assert study.user_attrs["int8_activation_type"] == activations
    assert (outcome.int8_format, outcome.int8_activation_type) == (
        study.user_attrs["int8_format"],
        activations,
    )
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
