"""A quality objective that is lower-is-better: perplexity of a causal language model (a tiny
random Llama, saved as a Hugging Face folder), searched end to end."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from optuna.study import StudyDirection
from optuna.trial import TrialState

from tests import models
from tests.helpers import search_config, trial_runs
from tightfit.config import config_from_dict
from tightfit.exceptions import ConfigError
from tightfit.hardware_profiles import HardwareProfile
from tightfit.runs import run_search
from tightfit.task import perplexity
from tightfit.workspace import Setup, Workspace

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def llama_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("hf") / "llama-tiny"
    config = transformers.LlamaConfig(
        vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        use_cache=False,
    )  # fmt: skip
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    return folder


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
    config = search_config(
        tmp_path / "w",
        fast_profile_file,
        name="ppl",
        model={"hf": str(llama_folder)},
        data={"callable": "tests.models:next_token_data"},
        objectives=["perplexity", "latency_ms", "size_mb"],
        constraints={"max_perplexity_increase": 0.5},
        space={"prune": {"ratios": [0.0, 0.25, 0.5]}, "lowrank": {"enabled": False}},
        n_trials=5,
        seeds={"uniform": 2, "global_magnitude": 0},
    )
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


def _dominance_free(front) -> bool:
    points = front[["perplexity", "latency_ms", "size_mb"]].to_numpy()
    return not any(
        (a <= b).all() and (a < b).any()
        for i, a in enumerate(points)
        for j, b in enumerate(points)
        if i != j
    )
