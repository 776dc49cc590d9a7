"""A finished search in MLflow: its runs and summary, the UI and its chart, the pareto command
(the session's ``finished`` search, tests/conftest.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.helpers import free_port, trial_runs

pytestmark = pytest.mark.slow


def test_mlflow_has_one_run_per_trial_and_a_summary(finished) -> None:
    config, outcome, _ = finished
    runs = trial_runs(outcome.workdir)
    assert sorted(int(r.data.tags["tightfit.trial"]) for r in runs) == list(range(6))
    front = set(outcome.profiles[0].front["trial"])
    for r in runs:
        assert (
            r.data.tags["tightfit.pareto"]
            == str(int(r.data.tags["tightfit.trial"]) in front).lower()
        )
        if r.data.tags["tightfit.status"] == "complete":
            assert {"accuracy", "latency_ms", "size_mb", "speedup"} <= set(r.data.metrics)
        elif r.data.tags["tightfit.status"] == "stopped":
            assert r.data.tags["tightfit.stage"] in ("subset", "accuracy")
            assert "accuracy" in r.data.metrics and "latency_ms" not in r.data.metrics
        else:
            assert r.data.tags["tightfit.error"]
    [summary] = trial_runs(outcome.workdir, "summary")
    assert summary.data.metrics["n_trials"] == 6
    # trials are nested under their profile's summary run (MLflow's parent-run tag)
    assert {r.data.tags["mlflow.parentRunId"] for r in runs} == {summary.info.run_id}
    # the front's hypervolume, logged after every trial: never decreasing
    client = MlflowClient(tracking_uri=f"sqlite:///{outcome.workdir / 'mlflow.db'}")
    history = client.get_metric_history(summary.info.run_id, "hypervolume")
    steps = sorted((m.step, m.value) for m in history)
    assert [s for s, _ in steps][:6] == list(range(1, 7))
    values = [v for _, v in steps]
    assert values == sorted(values)
    assert values[-1] == pytest.approx(summary.data.metrics["hypervolume"])  # = the front's
    files = {Path(f).name for f in (outcome.profiles[0].summary_dir).iterdir()}
    assert {"front.csv", "front.html", "front.png", "trials.csv", "space.json"} <= files
    # what discovery refused, with reasons (the example's CNN: nothing), logged with the summary
    refused = json.loads((outcome.profiles[0].summary_dir / "refused.json").read_text())
    assert len(refused) == summary.data.metrics["n_refused_units"]
    assert {"sensitivity.csv", "sensitivity.png"} <= files
    logged = {a.path for a in client.list_artifacts(summary.info.run_id)}
    assert {"sensitivity.csv", "sensitivity.png", "front.csv"} <= logged
    assert "sensitivity_s" in summary.data.metrics
    study = outcome.profiles[0].study
    assert summary.data.params["int8_format"] == study.user_attrs["int8_format"]
    for fmt, m in study.user_attrs["int8_formats_measured"].items():
        assert summary.data.metrics[f"uniform_int8_{fmt}_latency_ms"] == pytest.approx(
            m["latency_ms"]
        )


@pytest.fixture()
def ui_server(finished):
    """`tightfit ui` on a free localhost port; yields (base URL, printed lines)."""
    import os
    import signal
    import subprocess
    import sys
    import time
    import urllib.request

    _, outcome, _ = finished
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tightfit.cli",
            "ui",
            "--workdir",
            str(outcome.workdir),
            "--port",
            str(port),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # the server's workers are killed with their process group
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2):
                    break
            except OSError:
                time.sleep(0.5)
        yield base, proc
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.communicate(timeout=60)


def test_ui_serves_the_search_with_its_view(ui_server, finished) -> None:
    import urllib.request

    base, proc = ui_server
    url = f"{base}/ajax-api/2.0/mlflow/experiments/get-by-name?experiment_name=e2e"
    with urllib.request.urlopen(url, timeout=10) as r:
        experiment = json.loads(r.read())["experiment"]
    tags = {t["key"]: t["value"] for t in experiment["tags"]}
    view = json.loads(tags["mlflow.sharedViewState.tightfit-pareto"])
    state = json.loads(view["state"])
    assert {c["type"] for c in state["compareRunCharts"]} == {"SCATTER", "PARALLEL"}
    first_line = proc.stdout.readline()
    assert (
        f"{base}/#/experiments/{experiment['experiment_id']}/runs?viewStateShareKey=tightfit-pareto"
        in first_line
    )


def test_browser_shows_the_accuracy_latency_chart(ui_server, finished, tmp_path) -> None:
    """Headless Chromium renders the view: the front's chart and the trial runs are on the page."""
    import os
    import shutil
    import subprocess

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        if os.environ.get("CI"):
            pytest.fail(
                "chromium is missing: the test set-up (make test) installs Debian's chromium"
            )
        pytest.skip("chromium is not installed (make test installs it)")
    base, proc = ui_server
    url = proc.stdout.readline().split(" at ", 1)[1].split()[0]
    assert url.startswith(base)
    flags = [
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1600,1000", "--virtual-time-budget=30000",
    ]  # fmt: skip
    shot = tmp_path / "front.png"
    subprocess.run(
        [chromium, *flags, f"--screenshot={shot}", url], capture_output=True, timeout=180
    )

    def dump(page: str, *wanted: str) -> str:
        # Under load (CI runs this beside other tests) the UI's chart requests can outlast one
        # Chromium's virtual-time budget, and the card is not in the DOM yet. A fresh Chromium
        # renders the page again, up to three times; the assertions below read the last dump.
        for _ in range(3):
            dom = subprocess.run(
                [chromium, *flags, "--dump-dom", page], capture_output=True, text=True, timeout=180
            ).stdout
            if all(w in dom for w in wanted):
                break
        return dom

    dom = dump(
        url,
        "Pareto front (red), feasible (blue)",
        "latency_ms vs. accuracy",
        "Parallel Coordinates",
    )
    assert shot.stat().st_size > 20_000  # a rendered page, not a blank one
    assert "Pareto front (red), feasible (blue)" in dom  # the section of the saved view
    assert "latency_ms vs. accuracy" in dom  # the scatter card (the UI titles it by its axes)
    assert "Parallel Coordinates" in dom
    assert "cpu-ort-fast-trial-0000" in dom  # the trial runs are listed
    assert "cpu-ort-fast-pareto-front" not in dom  # the summary run is filtered out of the chart
    table_url = url.replace("compareRunsMode=CHART", "compareRunsMode=TABLE")
    columns = ("accuracy", "latency_ms", "speedup", "size_mb", "tightfit.pareto")
    table = dump(table_url, *(f">{column}<" for column in columns))
    for column in columns:
        assert f">{column}<" in table, column  # the objectives are columns of the runs table


def test_pareto_command_prints_the_front(finished) -> None:
    import subprocess
    import sys

    _, outcome, _ = finished
    out = subprocess.run(
        [sys.executable, "-m", "tightfit.cli", "pareto", "--workdir", str(outcome.workdir)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**__import__("os").environ, "COLUMNS": "200"},
    )
    assert out.returncode == 0, out.stderr
    assert "e2e on" in out.stdout and "latency_ms" in out.stdout
    for trial in outcome.profiles[0].front["trial"]:
        assert f"│ {trial} " in out.stdout or f"│ {trial}  " in out.stdout


def test_latency_samples_environment_and_cache_misses_are_logged(finished) -> None:
    config, outcome, _ = finished
    client = MlflowClient(tracking_uri=f"sqlite:///{outcome.workdir / 'mlflow.db'}")
    complete = [
        r for r in trial_runs(outcome.workdir) if r.data.tags["tightfit.status"] == "complete"
    ]
    assert complete
    # a fresh cache: each architecture is measured at most once (uniform int8 may already have
    # been, before the trials, to choose the int8 format), and every repeat is a hit that
    # finished after the measurement it reuses, with its latency
    by_signature: dict[str, list] = {}
    for r in sorted(complete, key=lambda r: r.info.end_time):
        tags = r.data.tags
        assert tags["env.cpu"] and tags["env.execution_provider"] == "CPUExecutionProvider"
        by_signature.setdefault(tags["tightfit.signature"], []).append(r)
        assert 3 <= r.data.metrics["latency_rounds"] <= 6
        if tags["tightfit.latency_cache"] == "miss":  # every round's raw block times, kept
            path = client.download_artifacts(r.info.run_id, "latency_samples.json")
            samples = json.loads(Path(path).read_text())["samples_ms"]
            assert len(samples["candidate"]) == len(samples["baseline"])
            assert r.data.metrics["latency_rounds"] <= len(samples["candidate"]) <= 6
    assert any(r.data.tags["tightfit.latency_cache"] == "miss" for r in complete)
    for runs in by_signature.values():
        misses = [r for r in runs if r.data.tags["tightfit.latency_cache"] == "miss"]
        assert len(misses) <= 1
        if misses:
            hits = runs[runs.index(misses[0]) + 1 :]
            assert all(r.data.tags["tightfit.latency_cache"] == "hit" for r in hits)
            for r in hits:
                assert r.data.metrics["latency_ms"] == pytest.approx(
                    misses[0].data.metrics["latency_ms"]
                )
