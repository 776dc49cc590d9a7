"""The latency cache across searches: a second search on the same machine reuses every
measurement of the first."""

from __future__ import annotations

import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState

from tests.helpers import DISTILL, search_config
from tightfit.runs import run_search

pytestmark = pytest.mark.slow


def test_a_second_search_reuses_every_measurement(finished, tmp_path, fast_profile_file) -> None:
    config, outcome, _ = finished
    again = search_config(
        tmp_path / "again",
        fast_profile_file,
        name="e2e-again",
        latency={"cache_dir": str(outcome.workdir / "lc")},
        recovery=DISTILL,  # the same candidates score the same: the same ones are measured
    )
    [profile] = run_search(again).profiles
    complete = profile.study.get_trials(states=(TrialState.COMPLETE,))
    assert complete and all(t.user_attrs["latency_cache"] == "hit" for t in complete)
    for t in complete:  # the default predictor: graph counts, no layer timed
        assert (
            "mmac_int8" in t.user_attrs["features"] and "layer_ms" not in t.user_attrs["features"]
        )
        assert t.user_attrs["layer_host"] == ""
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'again' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("e2e-again")
    runs = client.search_runs([exp.experiment_id], filter_string="tags.`tightfit.kind` = 'trial'")
    hits = [r for r in runs if r.data.tags.get("tightfit.latency_cache") == "hit"]
    assert len(hits) == len(complete)
    [summary] = client.search_runs(
        [exp.experiment_id], filter_string="tags.`tightfit.kind` = 'summary'"
    )
    assert summary.data.metrics["n_latency_measured"] == 0
    assert summary.data.metrics["n_latency_cache_hits"] == len(complete)
    # the cached ratios are the first search's, scaled to this search's reference latency
    before = {
        t.user_attrs["candidate"]: t.user_attrs["latency"]["ratio"]
        for t in outcome.profiles[0].study.get_trials(states=(TrialState.COMPLETE,))
    }
    for t in complete:
        assert t.user_attrs["latency"]["ratio"] == before[t.user_attrs["candidate"]]
