"""Searches on a multi-node Ray cluster started in the test (head and workers on this machine).

Hardware affinity (every measurement on a node that offers its profile's resource and label,
one at a time per device) and a worker node killed mid-search (nothing lost, nothing
duplicated). The nodes are Ray processes of their own, as on a real cluster; only the machine
is shared.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState

from tests.helpers import search_config
from tightfit.hardware_profiles import HardwareProfile
from tightfit.runs import run_search
from tightfit.studies import load_study

pytestmark = pytest.mark.slow


def _profile_file(tmp: Path, base: HardwareProfile, name: str, resource: str, hw: str) -> Path:
    profile = base.model_copy(
        update={
            "name": name,
            "ray_resources": {resource: 1.0},
            "ray_labels": {"hw": hw},
            "measurement": base.measurement.model_copy(update={"pin_threads": False}),
        }
    )
    path = tmp / f"{name}.yaml"
    path.write_text(profile.to_yaml())
    return path


def _config(tmp: Path, name: str, profiles: list[Path], address: str, **extra: object):
    extra.setdefault("ray", {"address": address})
    return search_config(
        tmp / "work",
        name=name,
        profiles=[str(p) for p in profiles],
        # every trial is measured
        latency={"cache": False, "prescreen": False},
        staged={"enabled": False},
        **extra,
    )


@pytest.fixture()
def cluster():
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    nodes = {
        "x1": c.add_node(num_cpus=1, resources={"lat:x": 1}, labels={"hw": "x"}),
        "x2": c.add_node(num_cpus=1, resources={"lat:x": 1}, labels={"hw": "x"}),
        "y": c.add_node(num_cpus=1, resources={"lat:y": 1}, labels={"hw": "y"}),
    }
    c.wait_for_nodes()
    yield c, {k: n.node_id for k, n in nodes.items()}
    c.shutdown()


def _measured(study) -> list[dict]:
    """The latency summaries of the trials that were measured (not the baseline's reference)."""
    return [
        t.user_attrs["latency"]
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    ]


def _overlaps(windows: list[tuple[float, float]]) -> list[tuple[tuple, tuple]]:
    windows = sorted(windows)
    return [(a, b) for a, b in zip(windows, windows[1:], strict=False) if b[0] < a[1]]


def test_measurements_run_only_on_their_profiles_nodes(
    tmp_path: Path, fast_profile: HardwareProfile, cluster
) -> None:
    c, ids = cluster
    px = _profile_file(tmp_path, fast_profile, "lat-x", "lat:x", "x")
    py = _profile_file(tmp_path, fast_profile, "lat-y", "lat:y", "y")
    config = _config(
        tmp_path, "affinity", [px, py], c.address, n_trials=8, concurrency=3,
        profile_concurrency={"lat-y": 2},
    )  # fmt: skip
    outcome = run_search(config)

    offers = {"lat-x": {ids["x1"], ids["x2"]}, "lat-y": {ids["y"]}}
    for p in outcome.profiles:
        study = load_study(config, p.profile, config.workdir_path)
        measured = _measured(study)
        assert len(measured) == 8
        nodes = {m["node_id"] for m in measured}
        assert nodes <= offers[p.profile], (p.profile, nodes)
        for node in nodes:  # one measurement at a time per device
            windows = [tuple(m["window"]) for m in measured if m["node_id"] == node]
            assert not _overlaps(windows), (p.profile, node)
        compress = {t.user_attrs["compress_node_id"] for t in study.trials if t.user_attrs}
        assert compress - {""}  # compression ran on the cluster too, anywhere
    # both x nodes measured: the profile had two devices and used them
    assert {m["node_id"] for m in _measured(load_study(config, "lat-x", config.workdir_path))} == {
        ids["x1"],
        ids["x2"],
    }
    # the two profiles ran at the same time, each on its own devices
    wx = [m["window"] for m in _measured(load_study(config, "lat-x", config.workdir_path))]
    wy = [m["window"] for m in _measured(load_study(config, "lat-y", config.workdir_path))]
    # (their measurement periods overlap: neither profile waited for the other to finish)
    assert min(b[0] for b in wy) < max(a[1] for a in wx)
    assert min(a[0] for a in wx) < max(b[1] for b in wy)
    client = MlflowClient(tracking_uri=f"sqlite:///{config.workdir_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("affinity")
    runs = client.search_runs(
        [exp.experiment_id], filter_string="tags.`tightfit.kind` = 'trial'", max_results=100
    )
    assert {r.data.tags["tightfit.node_id"] for r in runs} <= offers["lat-x"] | offers["lat-y"]


def test_no_node_offers_the_profile_stops_before_the_first_trial(
    tmp_path: Path, fast_profile: HardwareProfile, cluster
) -> None:
    from tightfit.exceptions import ConfigError

    c, _ = cluster
    pz = _profile_file(tmp_path, fast_profile, "lat-z", "lat:z", "z")
    config = _config(tmp_path, "nowhere", [pz], c.address, n_trials=2)
    t0 = time.monotonic()
    with pytest.raises(ConfigError, match=r"lat-z.*no alive Ray node has the labels \{hw=z\}"):
        run_search(config)
    assert time.monotonic() - t0 < 120  # it does not wait for a node that never comes
    assert (
        not (config.workdir_path / "optuna.journal").exists()
        or not load_study(config, "lat-z", config.workdir_path).trials
    )


def test_worker_node_killed_mid_search_loses_and_duplicates_nothing(
    tmp_path: Path, fast_profile: HardwareProfile, cluster
) -> None:
    c, ids = cluster
    px = _profile_file(tmp_path, fast_profile, "lat-x", "lat:x", "x")
    n_trials = 16  # measurements take ~0.2 s: enough of them start after the grace below
    config = _config(tmp_path, "killnode", [px], c.address, n_trials=n_trials, concurrency=3)
    victim = next(n for n in c.worker_nodes if n.node_id == ids["x1"])
    killed_at: list[float] = []
    dead_at: list[float] = []

    def kill_when_running() -> None:
        deadline = time.monotonic() + 400
        while time.monotonic() < deadline:
            try:
                done = load_study(config, "lat-x", config.workdir_path).get_trials(
                    deepcopy=False, states=(TrialState.COMPLETE,)
                )
            except Exception:  # not created yet
                done = []
            if len(done) >= 3:
                killed_at.append(time.time())
                c.remove_node(victim, allow_graceful=False)
                dead_at.append(time.time())
                return
            time.sleep(0.2)

    killer = threading.Thread(target=kill_when_running, daemon=True)
    killer.start()
    run_search(config)
    killer.join(timeout=5)
    assert killed_at, "the node was not killed during the search"

    study = load_study(config, "lat-x", config.workdir_path)
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    assert len(complete) == n_trials
    assert not study.get_trials(deepcopy=False, states=(TrialState.FAIL, TrialState.RUNNING))
    # the rest, if any, repeat a complete trial's candidate (told its result, not counted)
    rest = [t for t in study.trials if t.state != TrialState.COMPLETE]
    assert all(t.user_attrs["repeat_of"] in {c.number for c in complete} for t in rest)
    # no candidate evaluated twice: a retried task or a moved measurement tells its trial once
    assert len({t.number for t in complete}) == n_trials
    # Ray kills the node's raylet; an actor worker there notices within a second
    # (raylet_death_check_interval_milliseconds) and can still send a result it finished in
    # that second straight to the driver: a real measurement, so the cut has a grace.
    orphan_grace = 2.0
    after = [m for m in _measured(study) if m["window"][0] > dead_at[0] + orphan_grace]
    assert after and all(m["node_id"] == ids["x2"] for m in after)
    client = MlflowClient(tracking_uri=f"sqlite:///{config.workdir_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("killnode")
    runs = client.search_runs(
        [exp.experiment_id], filter_string="tags.`tightfit.kind` = 'trial'", max_results=100
    )
    numbers = sorted(int(r.data.tags["tightfit.trial"]) for r in runs)
    assert numbers == [t.number for t in study.trials]  # one run per trial
    assert all(r.info.status == "FINISHED" for r in runs)
    # a measurement that was running on the killed node was moved: it ended on the survivor,
    # within the attempts allowed; one that never ran there has no move
    from tightfit.search._driver import MAX_MEASURE_ATTEMPTS

    moved = [t for t in complete if t.user_attrs.get("measurement_moves", 0)]
    for t in moved:
        assert t.user_attrs["latency"]["node_id"] == ids["x2"], t.number
        assert t.user_attrs["measurement_moves"] < MAX_MEASURE_ATTEMPTS
    # a measurement on the killed node ended there before its worker died, or it was moved
    on_victim = [t for t in complete if t.user_attrs["latency"]["node_id"] == ids["x1"]]
    late = [
        t.number
        for t in on_victim
        if t.user_attrs["latency"]["window"][1] > dead_at[0] + orphan_grace
    ]
    assert not late, late


def test_a_local_search_starts_its_own_ray_beside_a_running_cluster(
    cluster, tmp_path, fast_profile_file, monkeypatch
) -> None:
    """No address: a Ray of its own, not the cluster this machine happens to run (ray.init()
    alone would join that cluster and refuse num_cpus; seen with a benchmark beside CI)."""
    import ray

    from tightfit.search._ray import start_ray

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    config = _config(
        tmp_path, "beside", [fast_profile_file], "", ray={"address": None, "num_cpus": 1}
    )
    assert start_ray(config)
    try:
        assert len(ray.nodes()) == 1  # the cluster has 4
        assert ray.cluster_resources()["CPU"] == 1
    finally:
        ray.shutdown()


@pytest.mark.parametrize("ship", [True, False])
def test_a_driver_outside_the_cluster_ships_its_folder(
    ship: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``ray.address`` from a user's machine: the workers import the user's modules from the
    folder sent with the connection, not from a path that exists on the driver only."""
    import ray
    from ray.cluster_utils import Cluster

    from tightfit.search._ray import start_ray

    project = tmp_path / "project"
    project.mkdir()
    (project / "shipped_mod.py").write_text("ANSWER = 42\n")
    monkeypatch.chdir(project)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        config = _config(
            tmp_path, "ship", ["cpu-ort"], c.address, ray={"address": c.address, "ship": ship}
        )
        assert start_ray(config)
        # the driver's copy goes: only what was sent can be imported now
        (project / "shipped_mod.py").rename(tmp_path / "elsewhere.py")

        def ask() -> tuple[int, str]:  # defined here, so Ray sends it by value
            import importlib
            import os

            return importlib.import_module("shipped_mod").ANSWER, os.getcwd()

        task = ray.remote(num_cpus=0)(ask)
        if ship:
            answer, cwd = ray.get(task.remote())
            assert answer == 42 and Path(cwd) != project  # Ray's copy of the folder
        else:
            with pytest.raises(ray.exceptions.RayTaskError, match="No module named 'shipped_mod'"):
                ray.get(task.remote())
    finally:
        ray.shutdown()
        c.shutdown()
