"""The MLflow record keeper on a real local store: one run per trial, nested under the
profile's summary run; statuses, the front's flag, reconciling after a crash."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState

from tightfit.keys import Tag, TrialAttr
from tightfit.runs._tracker import MLFLOW_PARENT_RUN_ID, Tracker, local_artifacts, tracking_uri
from tightfit.search import Told

OBJECTIVES = ["accuracy", "latency_ms", "size_mb"]


@pytest.fixture()
def tracker(tmp_path: Path) -> Tracker:
    return Tracker(tmp_path, "unit", objectives=OBJECTIVES)


def _run(tracker: Tracker, run_id: str):
    return MlflowClient(tracking_uri=tracker.uri).get_run(run_id)


def test_a_trial_run_from_start_to_complete(tracker: Tracker) -> None:
    run_id = tracker.start_trial("cpu", 3, {"fc.prune_ratio": 0.5})
    assert tracker.start_trial("cpu", 3, {}) == run_id  # resumed, not created twice
    run = _run(tracker, run_id)
    assert run.info.status == "RUNNING" and run.data.params == {"fc.prune_ratio": "0.5"}
    tags = run.data.tags
    assert (tags[Tag.PROFILE], tags[Tag.TRIAL], tags[Tag.KIND]) == ("cpu", "3", "trial")
    assert tags[MLFLOW_PARENT_RUN_ID] == tracker.summary_run("cpu")
    told = Told(
        "complete",
        metrics={"accuracy": 0.9, "latency_ms": 1.5},
        feasible=True,
        artifacts={"report.json": {"pruned": 4}},
        tags={Tag.STAGE: "complete"},
    )
    tracker.record_trial(run_id, told)
    run = _run(tracker, run_id)
    assert run.info.status == "FINISHED"
    assert run.data.metrics == {"accuracy": 0.9, "latency_ms": 1.5}
    assert run.data.tags[Tag.STATUS] == "complete" and run.data.tags[Tag.FEASIBLE] == "true"
    local = Path(run.info.artifact_uri.removeprefix("file://")) / "report.json"
    assert json.loads(local.read_text()) == {"pruned": 4}


def test_failed_and_pruned_trials_end_as_mlflow_says(tracker: Tracker) -> None:
    failed = tracker.start_trial("cpu", 0, {})
    tracker.record_trial(failed, Told("failed", error="boom"))
    stopped = tracker.start_trial("cpu", 1, {})
    tracker.record_trial(stopped, Told("stopped", metrics={"accuracy": 0.1}, feasible=False))
    assert _run(tracker, failed).info.status == "FAILED"
    assert _run(tracker, failed).data.tags[Tag.ERROR] == "boom"
    assert _run(tracker, stopped).info.status == "FINISHED"
    assert _run(tracker, stopped).data.tags[Tag.FEASIBLE] == "false"


def test_the_front_flag_follows_the_front(tracker: Tracker) -> None:
    ids = [tracker.start_trial("cpu", n, {}) for n in range(3)]
    other = tracker.start_trial("gpu", 0, {})
    tracker.set_pareto("cpu", {0, 2})
    assert [_run(tracker, r).data.tags[Tag.PARETO] for r in ids] == ["true", "false", "true"]
    tracker.set_pareto("cpu", {1})
    assert [_run(tracker, r).data.tags[Tag.PARETO] for r in ids] == ["false", "true", "false"]
    assert _run(tracker, other).data.tags[Tag.PARETO] == "false"  # another profile's: untouched


def test_a_new_tracker_on_the_store_finds_its_runs(tracker: Tracker, tmp_path: Path) -> None:
    run_id = tracker.start_trial("cpu", 7, {})
    tracker.set_pareto("cpu", {7})
    again = Tracker(tmp_path, "unit")
    assert again.run_id("cpu", 7) == run_id and again.summary_run("cpu") == tracker.summary_run(
        "cpu"
    )


def test_interrupted_and_summary_runs(tracker: Tracker, tmp_path: Path) -> None:
    run_id = tracker.start_trial("cpu", 0, {})
    tracker.mark_interrupted("cpu", 0, "interrupted; enqueued again")
    run = _run(tracker, run_id)
    assert run.info.status == "KILLED" and run.data.tags[Tag.STATUS] == "interrupted"
    tracker.log_progress("cpu", {"hypervolume": 0.25}, step=1)
    tracker.stop_summary("cpu")
    assert _run(tracker, tracker.summary_run("cpu")).info.status == "KILLED"
    table = tmp_path / "front.csv"
    table.write_text("trial\n0\n")
    summary = tracker.log_summary("cpu", {"n_trials": 1.0}, [table], params={"seed": 0})
    run = _run(tracker, summary)
    assert run.info.status == "FINISHED" and run.data.params == {"seed": "0"}
    assert run.data.metrics == {"hypervolume": 0.25, "n_trials": 1.0}


def test_reconcile_writes_each_finished_trial_once_from_the_study(tracker: Tracker) -> None:
    """A driver killed between telling Optuna and writing MLflow: the study is the truth."""
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"])
    for values, state, attrs in (
        ([0.9, 1.0, 1.0], TrialState.COMPLETE, {TrialAttr.SPEEDUP: 1.5}),
        (None, TrialState.PRUNED, {TrialAttr.STAGE: "subset"}),
        (None, TrialState.FAIL, {TrialAttr.ERROR: "bad candidate"}),
    ):
        trial = study.ask()
        for k, v in attrs.items():
            trial.set_user_attr(k, v)
        study.tell(trial, values, state=state)
    tracker.start_trial("cpu", 0, {})  # asked and started, never finished: RUNNING
    assert tracker.reconcile("cpu", study.get_trials(), OBJECTIVES) == 3
    assert tracker.reconcile("cpu", study.get_trials(), OBJECTIVES) == 0  # once
    runs = [_run(tracker, tracker.run_id("cpu", n)) for n in range(3)]  # type: ignore[arg-type]
    assert [r.data.tags[Tag.STATUS] for r in runs] == ["complete", "stopped", "failed"]
    assert all(r.data.tags[Tag.RECONCILED] == "true" for r in runs)
    assert (
        runs[0].data.metrics["speedup"] == 1.5 and runs[2].data.tags[Tag.ERROR] == "bad candidate"
    )


def test_artifacts_stay_in_the_workdir_unless_a_server_keeps_them(tmp_path: Path) -> None:
    assert tracking_uri(tmp_path) == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert local_artifacts(tracking_uri(tmp_path), tmp_path) == (tmp_path / "mlartifacts").as_uri()
    assert local_artifacts("http://mlflow.internal:5000", tmp_path) is None
