"""A quality objective that is lower-is-better: perplexity of a causal language model (a tiny
random Llama, saved as a Hugging Face folder), searched end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from optuna.study import StudyDirection
from optuna.trial import TrialState

import tightfit
from tests import models
from tests.helpers import readme_block, search_config, trial_runs
from tightfit.config import config_from_dict
from tightfit.evaluators.runtimes import open_runner
from tightfit.exceptions import ConfigError
from tightfit.hardware_profiles import HardwareProfile
from tightfit.runs import run_search
from tightfit.task import perplexity
from tightfit.workspace import Setup, Workspace

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def llama_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return models.llama_folder(tmp_path_factory.mktemp("hf") / "llama-tiny")


def test_the_data_metric_and_the_objective_must_agree(
    llama_folder: Path, fast_profile: HardwareProfile, tmp_path: Path
) -> None:
    config = config_from_dict(
        {"name": "p", "model": {"hf": str(llama_folder)}, "data": "tests.models:next_token_data"}
    )  # objectives default to accuracy, higher is better
    with pytest.raises(ConfigError, match="perplexity.* is lower-is-better.*list 'perplexity'"):
        Workspace(Setup.of(config, fast_profile, tmp_path / "w"))


def test_a_perplexity_search_minimises_it_against_a_relative_limit(
    llama_folder: Path, fast_profile_file: Path, tmp_path: Path
) -> None:
    config = _llama_search(tmp_path, fast_profile_file, llama_folder, "ppl", [0.0, 0.25, 0.5], 5)
    outcome = run_search(config)
    profile = outcome.profile("cpu-ort-fast")
    study = profile.study
    assert study.directions[0] == StudyDirection.MINIMIZE
    # the baseline's perplexity is transformers' own on the validation ids
    data = models.next_token_data()
    model = transformers.LlamaForCausalLM.from_pretrained(llama_folder).eval()
    with torch.no_grad():
        logits = model(input_ids=torch.from_numpy(data["validation"]["input_ids"])).logits
    expected = perplexity(logits.numpy(), data["targets"])
    assert profile.baseline["perplexity"] == pytest.approx(expected, rel=1e-4)
    done = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(done) >= 3, [t.user_attrs.get("error") for t in study.trials]
    for t in done:
        increase = t.values[0] / profile.baseline["perplexity"] - 1
        assert t.user_attrs["perplexity_increase"] == pytest.approx(increase)
        assert t.constraints["perplexity_increase"] == pytest.approx(increase - 0.5, abs=1e-8)
    front = outcome.front("cpu-ort-fast")
    assert {"perplexity", "perplexity_increase"} <= set(front.columns)
    assert _dominance_free(front)  # minimised perplexity: no front point beats another
    header = (profile.summary_dir / "front.csv").read_text().splitlines()[0].split(",")
    assert "perplexity" in header and "accuracy" not in header
    runs = trial_runs(tmp_path / "w", name="ppl")
    assert runs and all("perplexity" in r.data.metrics for r in runs if r.data.metrics)
    assert all("accuracy" not in r.data.metrics for r in runs)
    [summary] = trial_runs(tmp_path / "w", kind="summary", name="ppl")
    assert summary.data.metrics["baseline_perplexity"] == pytest.approx(expected, rel=1e-4)


def _llama_search(
    tmp_path: Path, profile: Path, folder: Path, name: str, ratios: list[float], n_trials: int
):  # type: ignore[no-untyped-def]
    """A perplexity search of the tiny Llama: +50% allowed, heads and MLP neurons pruned at
    ``ratios``, bit-widths as the profile offers, no low rank."""
    return search_config(
        tmp_path / "w",
        profile,
        name=name,
        model={"hf": str(folder)},
        data={"callable": "tests.models:next_token_data"},
        objectives=["perplexity", "latency_ms", "size_mb"],
        constraints={"max_perplexity_increase": 0.5},
        space={"prune": {"ratios": ratios}, "lowrank": {"enabled": False}},
        n_trials=n_trials,
        seeds={"uniform": 2, "global_magnitude": 0},
    )


def _dominance_free(front) -> bool:
    points = front[["perplexity", "latency_ms", "size_mb"]].to_numpy()
    return not any(
        (a <= b).all() and (a < b).any()
        for i, a in enumerate(points)
        for j, b in enumerate(points)
        if i != j
    )


def test_a_generation_profile_measures_decode_through_the_kv_cache(tmp_path: Path) -> None:
    """Each trial and the baseline measured as a generation through a shared cache buffer; the
    exported engine's manifest says how to feed it, and the README's script, which follows it,
    generates the tokens the measurement's runner generates."""
    from tests.conftest import FAST_MEASUREMENT
    from tightfit.hardware_profiles import get_profile
    from tightfit.keys import TrialAttr

    base = get_profile("cpu-ort-llm")
    assert base.generation is not None
    profile = base.model_copy(
        update={
            "name": "cpu-ort-llm-fast",
            "generation": base.generation.model_copy(update={"prompt_tokens": 16, "new_tokens": 6}),
            "measurement": base.measurement.model_copy(update=FAST_MEASUREMENT),
        }
    )
    profile_file = tmp_path / "cpu-ort-llm-fast.yaml"
    profile_file.write_text(profile.to_yaml())
    # heads of 16: the operator rotates them, so the cache can be one shared buffer
    folder = models.llama_folder(tmp_path / "llama16", hidden=64)
    config = _llama_search(tmp_path, profile_file, folder, "gen", [0.0, 0.5], 4)
    outcome = run_search(config)
    result = outcome.profile("cpu-ort-llm-fast")
    done = result.study.get_trials(states=(TrialState.COMPLETE,))
    assert len(done) >= 3, [t.user_attrs.get("error") for t in result.study.trials]
    for t in done:
        latency = t.user_attrs[TrialAttr.LATENCY]
        phases = latency["phases_ms"]
        assert set(phases) == {"prefill_ms", "decode_ms_per_token", "end_to_end_ms"}
        assert set(latency["baseline_phases_ms"]) == set(phases)
        # the objective is decode per token: the candidate's block times are those
        assert latency["median_ms"] == pytest.approx(phases["decode_ms_per_token"], rel=1e-6)
        # each generation's whole time is its prefill and 5 decode steps, so the medians of
        # whole times exceed the medians of either part (a median of sums is not the sum)
        assert phases["end_to_end_ms"] > phases["prefill_ms"]
        assert phases["end_to_end_ms"] > 5 * phases["decode_ms_per_token"]
        if not t.user_attrs["is_baseline"]:  # measured as the baseline is: fused and packed
            report = t.user_attrs["report"]
            assert report["packed_matmuls"] > 0
            assert report["fusions"]["SkipSimplifiedLayerNormalization"] > 0
            assert report["fusions"]["GroupQueryAttention"] > 0  # written at export
            assert report["cache_buffer"] == "shared"
    export = result.study.user_attrs["export"]
    assert export["cache_buffer"] == "shared"
    assert export["packed_matmuls"] == 2 * 2  # q+k+v and gate+up of each of 2 blocks
    assert export["fusions"]["SkipSimplifiedLayerNormalization"] > 0
    assert export["attention"] == "GroupQueryAttention"
    assert export["fusions"]["GroupQueryAttention"] == 2
    # the baseline's perplexity was scored on the KV-cache graph (empty cache): the model's own
    data = models.next_token_data()
    model = transformers.LlamaForCausalLM.from_pretrained(folder).eval()
    with torch.no_grad():
        logits = model(input_ids=torch.from_numpy(data["validation"]["input_ids"])).logits
    assert result.baseline["perplexity"] == pytest.approx(
        perplexity(logits.numpy(), data["targets"]), rel=1e-4
    )

    # the exported knee: its manifest documents the cache, and the README's script generates
    # with it what the measurement's runner (the shared buffer) generates
    [engine] = tightfit.export(tmp_path / "w", pick="knee", out=tmp_path / "engines")
    interface = json.loads(engine.manifest.read_text())["generation"]
    assert interface["cache_buffer"] == "shared"
    assert "attention_mask" in interface["inputs"]
    assert [c["input"] for c in interface["cache"]] == [
        f"past_key_values.{i}.{kv}" for i in range(2) for kv in ("key", "value")
    ]
    assert all(
        c["output"] == c["input"].replace("past_key_values", "present") for c in interface["cache"]
    )
    assert interface["inputs"]["input_ids"]["type"] == "int64"
    prompt = data["validation"]["input_ids"][:2, :7]
    runner = open_runner(engine.path, profile, {"input_ids": prompt})
    assert runner.cache_buffer == "shared"  # type: ignore[attr-defined]
    expected = runner.generate()[2]  # type: ignore[attr-defined]
    script = readme_block("generate.py")
    namespace: dict = {"__name__": "readme"}
    exec(compile(script, "README.md:generate.py", "exec"), namespace)
    got = namespace["generate"](str(engine.path.parent), prompt, profile.generation.new_tokens)
    np.testing.assert_array_equal(got, expected)
