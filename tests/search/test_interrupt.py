"""Ctrl-C: the search stops cleanly, marks in-flight trials, and the same command resumes it."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState

from tests.helpers import search_file
from tightfit.config import load_config
from tightfit.keys import TrialAttr
from tightfit.runs._files import sha256
from tightfit.studies import load_study

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _progress(config, workdir: Path) -> tuple[int, set[int]]:
    """(complete trials, numbers of the trials running) as the journal has them now."""
    try:
        study = load_study(config, "cpu-ort-fast", workdir)
    except Exception:  # the study does not exist yet
        return 0, set()
    trials = study.get_trials(deepcopy=False)
    complete = sum(t.state == TrialState.COMPLETE for t in trials)
    return complete, {t.number for t in trials if t.state == TrialState.RUNNING}


def _search_file(tmp_path: Path, name: str, profile: Path, n_trials: int) -> Path:
    return search_file(
        tmp_path / "search.yaml",
        tmp_path / "work",
        profile,
        name=name,
        n_trials=n_trials,
        # every trial completes, however well the tiny network trained on this CPU: no
        # accuracy bound stops one, and none is pre-screened
        constraints={"max_accuracy_drop": 1.0},
        staged={"enabled": False},
        latency={"prescreen": False},
    )


def _start_when(
    config, cmd: list[str], n_complete: int, **popen: object
) -> tuple[subprocess.Popen, set[int]]:
    """Start the search; return once ``n_complete`` trials are complete and some are running
    (it still runs), with the numbers of those running."""
    proc = subprocess.Popen(cmd, cwd=ROOT, **popen)  # type: ignore[call-overload]
    deadline = time.monotonic() + 300
    workdir = config.workdir_path
    while time.monotonic() < deadline and proc.poll() is None:
        complete, running = _progress(config, workdir)
        if complete >= n_complete and running:
            return proc, running
        time.sleep(0.5)  # each look reads the whole journal: not so often that it slows the search
    raise AssertionError("the search ended before it could be stopped")


def test_sigint_then_rerun_finishes_every_trial(tmp_path: Path, fast_profile_file: Path) -> None:
    workdir = tmp_path / "work"
    path = _search_file(tmp_path, "ctrlc", fast_profile_file, n_trials=9)
    config = load_config(path)
    cmd = [sys.executable, "-m", "tightfit.cli", "search", str(path)]
    proc, running = _start_when(
        config, cmd, 3, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 130, err
    assert "rerun the same command to resume" in err and "Traceback" not in err

    study = load_study(config, "cpu-ort-fast", workdir)
    assert not study.get_trials(states=(TrialState.RUNNING,))  # nothing left dangling
    interrupted = [
        t
        for t in study.get_trials(states=(TrialState.FAIL,))
        if t.user_attrs.get(TrialAttr.INTERRUPTED)
    ]
    # each trial running at Ctrl-C was either finished (its result was already in) or marked
    # interrupted; none was dropped or left running
    for number in running:
        t = study.trials[number]
        assert t.state in (TrialState.COMPLETE, TrialState.PRUNED) or (
            t.state == TrialState.FAIL and t.user_attrs.get(TrialAttr.INTERRUPTED)
        ), (number, t.state)
    for t in interrupted:  # and re-queued under a new number
        assert any(u.user_attrs.get("retry_of") == t.number for u in study.trials)
    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("ctrlc")
    runs = client.search_runs([experiment.experiment_id])
    assert not [r for r in runs if r.info.status == "RUNNING"]
    for t in interrupted:
        [run] = [r for r in runs if r.data.tags.get("tightfit.trial") == str(t.number)] or [None]
        assert run is None or run.data.tags["tightfit.status"] == "interrupted"

    rerun = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    study = load_study(config, "cpu-ort-fast", workdir)
    counted = [
        t
        for t in study.get_trials(states=(TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED))
        if not t.user_attrs.get(TrialAttr.INTERRUPTED) and TrialAttr.REPEAT_OF not in t.user_attrs
    ]
    assert len(counted) == 9
    trial_runs = client.search_runs(
        [experiment.experiment_id], filter_string="tags.`tightfit.kind` = 'trial'", max_results=1000
    )
    numbers = [int(r.data.tags["tightfit.trial"]) for r in trial_runs]
    assert len(numbers) == len(set(numbers))  # one run per trial, none duplicated
    assert set(numbers) >= {t.number for t in counted}
    summary = workdir / "summary" / "cpu-ort-fast"
    repeats = [t for t in study.trials if TrialAttr.REPEAT_OF in t.user_attrs]  # not counted
    assert len(pd.read_csv(summary / "trials.csv")) == len(counted) + len(interrupted) + len(
        repeats
    )
    assert not pd.read_csv(summary / "front.csv").empty
    json.loads((summary / "space.json").read_text())
    assert not list(summary.glob(".*"))  # no half-written temporaries
    engines = tmp_path / "engines"
    exported = subprocess.run(
        [
            sys.executable,
            "-m",
            "tightfit.cli",
            "export",
            "--workdir",
            str(workdir),
            "--out",
            str(engines),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert exported.returncode == 0, exported.stderr
    [manifest] = engines.glob("*/manifest.json")
    files = json.loads(manifest.read_text())["files"]
    assert sha256(manifest.parent / "model.onnx") == files["model.onnx"]["sha256"]


def test_sigkill_then_rerun_reconciles_mlflow(tmp_path: Path, fast_profile_file: Path) -> None:
    """The driver killed outright (no clean-up of any kind), then the same command again."""
    import os

    workdir = tmp_path / "work"
    path = _search_file(tmp_path, "killed", fast_profile_file, n_trials=10)
    config = load_config(path)
    cmd = [sys.executable, "-m", "tightfit.cli", "search", str(path)]
    # a session of its own: the kill takes the driver and the local Ray it started, as a crash would
    proc, _ = _start_when(
        config,
        cmd,
        4,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    study = load_study(config, "cpu-ort-fast", workdir)
    left_running = [t.number for t in study.get_trials(states=(TrialState.RUNNING,))]
    assert left_running, "the kill came while trials were in flight: some must be left RUNNING"

    rerun = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    study = load_study(config, "cpu-ort-fast", workdir)
    assert not study.get_trials(states=(TrialState.RUNNING,))
    counted = [
        t
        for t in study.get_trials(states=(TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED))
        if not t.user_attrs.get(TrialAttr.INTERRUPTED) and TrialAttr.REPEAT_OF not in t.user_attrs
    ]
    assert len(counted) == 10
    for number in left_running:  # failed as interrupted and run again under a new number
        assert study.trials[number].user_attrs.get(TrialAttr.INTERRUPTED)
    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("killed")
    runs = client.search_runs(
        [experiment.experiment_id], filter_string="tags.`tightfit.kind` = 'trial'", max_results=1000
    )
    numbers = sorted(int(r.data.tags["tightfit.trial"]) for r in runs)
    assert numbers == [t.number for t in study.trials]  # exactly one run per trial
    assert not [r for r in runs if r.info.status == "RUNNING"]
    by_number = {int(r.data.tags["tightfit.trial"]): r for r in runs}
    for t in study.trials:
        status = by_number[t.number].data.tags["tightfit.status"]
        stage = t.user_attrs.get("stage", "prescreened")
        expected = (
            "complete"
            if t.state == TrialState.COMPLETE
            else (stage if stage in ("prescreened", "repeat") else "stopped")
            if t.state == TrialState.PRUNED
            else "interrupted"
            if t.user_attrs.get(TrialAttr.INTERRUPTED)
            else "failed"
        )
        assert status == expected, (t.number, t.state, status)
