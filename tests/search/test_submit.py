"""`tightfit submit` against the job server of a local cluster, then `status` and `logs`."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

from tests.helpers import free_port
from tests.helpers import tightfit as _cli
from tightfit.hardware_profiles import HardwareProfile
from tightfit.search import jobs

pytestmark = pytest.mark.slow


def _head(agent_port: int) -> tuple[Any, str]:
    """A one-node cluster with a dashboard, its job agent on ``agent_port``; its job server's
    address once it answers."""
    from ray.cluster_utils import Cluster

    port = free_port()
    args: dict[str, Any] = {
        "num_cpus": 2,
        "include_dashboard": True,
        "dashboard_port": port,
        "dashboard_agent_listen_port": agent_port,
    }
    c = Cluster(initialize_head=True, head_node_args=args)
    c.wait_for_nodes()
    address = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:  # the dashboard's job server comes up after the node
        try:
            jobs.client(address).list_jobs()
            return c, address
        except Exception:
            if time.monotonic() > deadline:
                c.shutdown()
                raise
            time.sleep(1)


@pytest.fixture()
def job_server():
    # the job agent on a port of its own: Ray's default (52365) is taken by any other Ray on
    # this machine (another pytest worker's search), and then no job can be submitted
    c, address = _head(agent_port=free_port())
    yield address
    c.shutdown()


def test_submit_runs_the_search_on_the_cluster(
    tmp_path: Path, fast_profile: HardwareProfile, job_server: str
) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "cpu-fast.yaml").write_text(
        fast_profile.model_copy(update={"name": "cpu-fast"}).to_yaml()
    )
    (project / "search.yaml").write_text(
        "name: submitted\n"
        "model: {callable: digits-cnn, kwargs: {width: 8, epochs: 2}}\n"
        "data: {callable: digits}\n"
        "space: {prune: {ratios: [0.0, 0.5]}, lowrank: {rank_fractions: [0.5]}}\n"
        "profiles: [cpu-fast.yaml]\n"
        "n_trials: 5\nconcurrency: 1\nseeds: {uniform: 1, global_magnitude: 0}\n"
    )
    remote = tmp_path / "on-head"
    cache = os.environ["TIGHTFIT_CACHE_DIR"]
    out = _cli(
        "submit", str(project / "search.yaml"), "--address", job_server,
        "--remote-workdir", str(remote), "--env", f"TIGHTFIT_CACHE_DIR={cache}",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "tightfit-submitted" in out.stdout

    again = _cli("submit", str(project / "search.yaml"), "--address", job_server)
    client = jobs.client(job_server)
    first = client.get_job_logs("tightfit-submitted")[-3000:]
    assert again.returncode == 2 and "already running" in again.stderr, first  # one job per search

    client = jobs.client(job_server)
    deadline = time.monotonic() + 480
    while jobs.status_text(client.get_job_status("tightfit-submitted")) not in jobs.TERMINAL:
        assert time.monotonic() < deadline, client.get_job_logs("tightfit-submitted")[-3000:]
        time.sleep(2)
    logs = client.get_job_logs("tightfit-submitted")
    assert jobs.status_text(client.get_job_status("tightfit-submitted")) == "SUCCEEDED", logs
    assert "Pareto front" in logs

    status = _cli("status", "--address", job_server)
    assert status.returncode == 0 and "tightfit-submitted" in status.stdout
    assert "SUCCEEDED" in status.stdout
    shown = _cli("logs", "submitted", "--address", job_server)
    assert shown.returncode == 0 and "Pareto front" in shown.stdout
    missing = _cli("logs", "nope", "--address", job_server)
    assert missing.returncode == 2 and "no tightfit job for 'nope'" in missing.stderr
    assert jobs.next_submission_id(client, "submitted") == "tightfit-submitted-2"

    # the driver ran on the head and wrote the study and the MLflow store there
    assert (remote / "optuna.journal").exists()
    mlflow = MlflowClient(tracking_uri=f"sqlite:///{remote / 'mlflow.db'}")
    exp = mlflow.get_experiment_by_name("submitted")
    trial_runs = mlflow.search_runs(
        [exp.experiment_id], filter_string="tags.`tightfit.kind` = 'trial'", max_results=100
    )
    assert len(trial_runs) == 5
    assert any(r.data.tags.get("tightfit.pareto") == "true" for r in trial_runs)
    [summary] = mlflow.search_runs(
        [exp.experiment_id], filter_string="tags.`tightfit.kind` = 'summary'"
    )
    names = {a.path for a in mlflow.list_artifacts(summary.info.run_id)}
    assert {"front.csv", "front.html"} <= names


def test_submit_without_an_address_says_how_to_give_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("RAY_API_SERVER_ADDRESS", raising=False)
    with pytest.raises(jobs.JobError, match="--address http://HEAD:8265"):
        jobs.client(None)
    with pytest.raises(
        jobs.JobError, match="cannot reach the Ray job server at http://127.0.0.1:9"
    ):
        jobs.client("http://127.0.0.1:9")


def test_a_head_whose_job_agent_never_comes_up_is_named_with_the_port(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process holds the agent's port, as another Ray on the head holds the default
    one: the submission retries, then says what to look at (Ray's own message only says 'try
    again'). The port is one this test holds, not 52365 itself: another Ray on the machine
    (another worker's search) may hold the default only for a while, and let the agent up."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "search.yaml").write_text(
        "name: agentless\nmodel: {callable: digits-cnn}\ndata: {callable: digits}\n"
    )
    monkeypatch.setattr(jobs, "AGENT_WAIT_S", 5.0)
    with socket.socket() as held:
        held.bind(("0.0.0.0", 0))
        held.listen()
        c, address = _head(agent_port=held.getsockname()[1])
        try:
            with pytest.raises(jobs.JobError, match="No available agent.*port, 52365"):
                jobs.submit(project / "search.yaml", address)
        finally:
            c.shutdown()
