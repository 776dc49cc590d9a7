"""A search logging to a real MLflow tracking server: its artifacts go to the server's artifact
store, where the team's MLflow UI reads them, not to the driver's disk."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.helpers import free_port
from tightfit.runs._tracker import Tracker, local_artifacts


@pytest.fixture()
def mlflow_server(tmp_path: Path):
    port = free_port()
    store = tmp_path / "server-artifacts"
    log = (tmp_path / "server.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1", "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--artifacts-destination", str(store)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"mlflow server did not start: {(tmp_path / 'server.log').read_text()}")
        time.sleep(0.5)
    try:
        yield url, store
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def test_artifacts_go_to_the_tracking_server_not_the_drivers_disk(mlflow_server, tmp_path):
    url, store = mlflow_server
    workdir = tmp_path / "work"
    workdir.mkdir()
    table = workdir / "front.csv"
    table.write_text("accuracy,latency_ms\n0.9,1.0\n")

    run_id = Tracker(workdir, "remote", uri=url).log_summary("cpu", {"n_front": 1.0}, [table])

    assert not (workdir / "mlartifacts").exists()
    assert [p.read_text() for p in store.rglob("front.csv")] == [table.read_text()]
    client = MlflowClient(tracking_uri=url)
    assert [a.path for a in client.list_artifacts(run_id)] == ["front.csv"]
    experiment = client.get_experiment_by_name("remote")
    assert experiment.artifact_location.startswith("mlflow-artifacts:")  # the server's choice


def test_a_local_store_keeps_its_artifacts_in_the_work_directory(tmp_path) -> None:
    table = tmp_path / "front.csv"
    table.write_text("a\n1\n")
    Tracker(tmp_path, "local").log_summary("cpu", {"n_front": 1.0}, [table])
    assert len(list((tmp_path / "mlartifacts").rglob("front.csv"))) == 1
    for uri in ("https://mlflow.example.com", "databricks"):
        assert local_artifacts(uri, tmp_path) is None
    assert local_artifacts("postgresql://db/mlflow", tmp_path) == (
        (tmp_path / "mlartifacts").resolve().as_uri()
    )
