"""End to end on the real parts: Optuna journal, local Ray, MLflow SQLite, ONNX Runtime."""

from __future__ import annotations

import json
from pathlib import Path

import onnxruntime as ort
import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState

from tests.helpers import search_config
from tightfit.exceptions import WorkdirError
from tightfit.runs import run_search
from tightfit.runs._files import sha256
from tightfit.runs.export import export
from tightfit.runs.pareto import front_frame
from tightfit.studies import load_study
from tightfit.workdir import prepare_workdir

pytestmark = pytest.mark.slow

#: the module's main search distills its pruned and factorized candidates
DISTILL = {"distill": {"enabled": True, "steps": 20}}


@pytest.fixture(scope="module")
def finished(tmp_path_factory, fast_profile_file):
    workdir = tmp_path_factory.mktemp("search")
    config = search_config(
        workdir,
        fast_profile_file,
        latency={"cache_dir": str(workdir / "lc"), "layer_table": True},  # opt-in predictor
        recovery=DISTILL,
    )
    seen = []
    outcome = run_search(config, progress=seen.append)
    return config, outcome, seen


@pytest.fixture(scope="module")
def loose(tmp_path_factory, fast_profile_file):
    """A search that no accuracy bound stops early: every candidate is measured, then measured
    again with the others at the end (``latency.remeasure: measured``)."""
    workdir = tmp_path_factory.mktemp("loose")
    config = search_config(
        workdir,
        fast_profile_file,
        name="loose",
        n_trials=5,
        constraints={"max_accuracy_drop": 1.0},
        sensitivity={"enabled": False},
        latency={"cache_dir": str(workdir / "lc"), "remeasure": "measured"},
    )
    return config, run_search(config)


def trial_runs(workdir: Path, kind: str = "trial", name: str = "e2e"):
    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    exp = client.get_experiment_by_name(name)
    return client.search_runs(
        [exp.experiment_id], filter_string=f"tags.`tightfit.kind` = '{kind}'", max_results=1000
    )


def test_search_completes_with_a_front(finished) -> None:
    config, outcome, seen = finished
    [profile] = outcome.profiles
    study = profile.study
    done = study.get_trials(states=(TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED))
    assert len(done) == 6
    assert study.trials[0].user_attrs["is_baseline"]  # the baseline is enqueued first
    assert study.trials[1].user_attrs["seed_kind"] == "uniform"
    assert not profile.front.empty and profile.front["accuracy"].notna().all()
    assert seen[-1].done == 6 and seen[-1].profile == "cpu-ort-fast"  # saw every trial
    distilled = 0
    for t in study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED)):
        c = json.loads(t.user_attrs["candidate"])
        if "report" in t.user_attrs and (c["prune"] or c["rank"]):  # recovery.distill is on
            assert t.user_attrs["report"]["distilled"]["steps"] == 20
            distilled += 1
    for t in study.get_trials(states=(TrialState.COMPLETE,)):
        assert "accuracy_drop" in t.constraints
        # cpu-ort: every measured candidate's layers were timed on this CPU for the predictor
        assert t.user_attrs["features"]["layer_ms"] > 0 and t.user_attrs["layer_host"]
        if "predicted_latency_ms" in t.user_attrs:
            assert t.user_attrs["predictor"] == "layers"
        lat = t.user_attrs["latency"]
        # 3 rounds; a measurement with too few undisturbed ones uses all its rounds (max 2 x 3)
        assert 3 <= lat["rounds"] <= 6 and lat["rounds"] + lat["rounds_dropped"] <= 6
    assert distilled > 0
    # int8_format auto on a network of Convs and a Gemm: nothing would be dynamic (ONNX Runtime
    # has no dynamic integer Gemm), so static, unmeasured (tests/search/test_int8_format.py
    # measures both formats on MatMul layers)
    assert study.user_attrs["int8_formats_measured"] == {}
    assert study.user_attrs["int8_format"] == "static"
    limit = config.constraints.max_accuracy_drop
    for t in study.get_trials(states=(TrialState.PRUNED,)):
        # staged evaluation: not measured, because its accuracy already rules it out
        assert t.user_attrs["stage"] in ("subset", "accuracy", "prescreened")
        if t.user_attrs["stage"] != "prescreened":
            assert t.constraints["accuracy_drop"] > 0 and t.user_attrs["accuracy_drop"] > limit
            assert "latency" not in t.user_attrs


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


def _measured_compressed(study) -> list[int]:
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    return sorted(t.number for t in complete if not t.user_attrs["is_baseline"])


def test_measured_candidates_are_measured_again_together(loose) -> None:
    import pandas as pd

    config, outcome = loose
    [profile] = outcome.profiles
    study = profile.study
    measured = _measured_compressed(study)
    assert len(measured) >= 3  # the baseline, then 4 candidates no bound stops
    joint = study.user_attrs["remeasured_jointly"]
    assert joint["trials"] == measured and joint["rounds"] >= 3
    ref = study.user_attrs["baseline_latency_ms"]
    for n in measured:
        lo, hi = joint["ratio_ci"][str(n)]
        assert lo * ref <= joint["latency_ms"][str(n)] <= hi * ref
    trials = pd.read_csv(profile.summary_dir / "trials.csv")
    again = trials.set_index("trial")["latency_ms_joint"].dropna()
    assert sorted(int(n) for n in again.index) == measured
    [summary] = trial_runs(outcome.workdir, "summary", name="loose")
    assert summary.data.metrics["n_remeasured_jointly"] == len(measured)
    assert summary.data.metrics["remeasure_s"] > 0
    # the rank agreement of the joint re-measurement with the search's own measurements,
    # recomputed here from the table the user gets
    from scipy.stats import spearmanr

    rows = trials.set_index("trial").loc[measured]
    expected = spearmanr(rows["latency_ms"], rows["latency_ms_joint"]).statistic
    assert summary.data.metrics["joint_vs_search_spearman"] == pytest.approx(expected, abs=1e-9)
    # the A/A check: the baseline measured against itself once, logged on the summary run
    aa = study.user_attrs["aa_check"]
    assert summary.data.metrics["aa_ratio"] == pytest.approx(aa["ratio"])
    assert summary.data.metrics["aa_error"] == pytest.approx(abs(aa["ratio"] - 1))
    assert aa["ratio_ci"][0] <= aa["ratio"] <= aa["ratio_ci"][1]
    assert summary.data.metrics["aa_exceeded"] == float(aa["error"] > aa["tolerance"])
    assert 0 <= summary.data.metrics["rounds_contended_share"] <= 1
    # the predictor, leave-one-out over the measured candidates (3 others at least)
    n_loo = len(measured) if len(measured) > 3 else 0
    assert summary.data.metrics.get("n_predicted_loo", 0) == n_loo
    assert ("predictor_spearman_loo_joint" in summary.data.metrics) == (len(measured) > 3)
    # the standard recipe, built from the baseline and measured in the same rounds
    recipe = study.user_attrs["recipe"]
    assert set(recipe) == {"fp32", "int8-dynamic", "int8-static"}
    for variant, r in recipe.items():
        assert r["ratio_ci"][0] <= r["ratio"] <= r["ratio_ci"][1], variant
        assert r["speedup"] == pytest.approx(1 / r["ratio"]) and r["feasible"]  # no bound here
        assert summary.data.metrics[f"recipe_{variant.replace('-', '_')}_speedup"] == (
            pytest.approx(r["speedup"])
        )
    assert recipe["fp32"]["fusions"] == {}  # a CNN: the transformer optimizer fuses nothing
    best_recipe = max(r["speedup"] for r in recipe.values())
    best_joint = max(ref / joint["latency_ms"][str(n)] for n in measured)
    assert summary.data.metrics["recipe_best_speedup"] == pytest.approx(best_recipe)
    assert summary.data.metrics["speedup_over_recipe"] == pytest.approx(best_joint / best_recipe)
    # resumed with nothing new to do: nothing is measured again
    run_search(config)
    study = load_study(config, "cpu-ort-fast", outcome.workdir)
    assert study.user_attrs["remeasured_jointly"] == joint
    assert study.user_attrs["recipe"] == recipe


def test_sensitivity_scan_shrinks_the_space_and_seeds(finished) -> None:
    """Every (unit, level) was scored alone; levels that break the constraint alone are gone
    from the searched space, and no trial used one."""
    import pandas as pd

    config, outcome, _ = finished
    [profile] = outcome.profiles
    scan = pd.read_csv(profile.summary_dir / "sensitivity.csv")
    assert len(scan) > 0 and set(scan["level"]) >= {1}
    space = {
        u["param"]: u["levels"]
        for u in json.loads((profile.summary_dir / "space.json").read_text())
    }
    dropped = json.loads((profile.summary_dir / "dropped_levels.json").read_text())
    limit = config.constraints.max_accuracy_drop
    for param, values in dropped.items():
        assert not set(values) & set(space.get(param, []))
        first = scan[(scan["param"] == param) & (scan["value"] == values[0])]
        assert float(first["accuracy_drop"].iloc[0]) > limit  # it broke the constraint alone
    for t in profile.study.trials:
        c = json.loads(t.user_attrs["candidate"])
        used = {f"{k}.prune_ratio": v for k, v in c["prune"].items()}
        used |= {f"{k}.rank": v for k, v in c["rank"].items()}
        assert all(v not in dropped.get(k, []) for k, v in used.items())


def test_export_knee_loads_in_a_fresh_session(finished, tmp_path) -> None:
    config, outcome, _ = finished
    [result] = export(outcome.workdir, pick="knee", out=tmp_path)
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image"]
    manifest = json.loads(result.manifest.read_text())
    assert manifest["files"]["model.onnx"]["sha256"] == sha256(result.path)
    assert manifest["candidate"]["base_model"] and manifest["profile"]["name"] == "cpu-ort-fast"
    assert abs(result.accuracy_change) < 1e-9  # deterministic replay: the same accuracy
    assert manifest["recovery"]["distill"]["enabled"]  # replayed with the search's recovery
    if manifest["candidate"]["prune"] or manifest["candidate"]["rank"]:
        assert manifest["report"]["distilled"]["steps"] == 20
    assert result.measured["latency_ms"] > 0
    # the re-measured ratio beside the logged one, each with its interval, and whether they agree
    trial = outcome.profiles[0].study.trials[result.trial]
    assert result.ratio_logged == (
        trial.user_attrs["latency"]["ratio"],
        *trial.user_attrs["latency"]["ratio_ci"],
    )
    assert result.ratio_now is not None and result.ratio_now[1] <= result.ratio_now[2]
    # agreement: the re-measured ratio inside the range a re-measurement of the logged one
    # lands in (both measurements' noise), which is wider than the logged interval
    assert result.expected is not None
    low, high = result.expected
    assert low <= result.ratio_logged[1] <= result.ratio_logged[0] <= result.ratio_logged[2] <= high
    inside = low <= result.ratio_now[0] <= high
    assert result.agrees is inside and manifest["latency"]["agrees_with_logged"] is inside
    assert manifest["latency"]["expected_range"] == [low, high]
    assert [p.name for p in tmp_path.iterdir()] == [result.path.parent.name]  # no staging left
    # replayed with the int8 format the search chose (auto resolved), not auto
    chosen = outcome.profiles[0].study.user_attrs["int8_format"]
    assert manifest["profile"]["quantization"]["int8_format"] == chosen


def test_export_all_remeasures_the_front_together(loose, tmp_path) -> None:
    config, outcome = loose
    results = export(outcome.workdir, pick="all", out=tmp_path)
    numbers = [r.trial for r in results]
    assert len(numbers) >= 2
    assert sorted(numbers) == sorted(int(t) for t in outcome.profiles[0].front["trial"])
    manifests = [json.loads(r.manifest.read_text()) for r in results]
    for number, m in zip(numbers, manifests, strict=True):
        assert sorted(m["latency"]["measured_with_trials"]) == sorted(set(numbers) - {number})
        joint = m["latency"]["environment"].get("measured_jointly_with")
        assert joint == (str(len(numbers) - 1) if len(numbers) > 1 else None)
        assert m["metrics_measured"]["latency_ms"] > 0
    # one set of rounds for all of them
    assert len({m["latency"]["rounds"] for m in manifests}) == 1


def test_export_register_makes_the_knee_pullable_by_alias(finished, tmp_path) -> None:
    import mlflow
    import numpy as np

    from tightfit.evaluators import predict

    config, outcome, _ = finished
    [result] = export(outcome.workdir, pick="knee", out=tmp_path / "engines", register=True)
    assert result.registered == "models:/e2e-cpu-ort-fast@knee"
    uri = f"sqlite:///{outcome.workdir / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    version = client.get_model_version_by_alias("e2e-cpu-ort-fast", "knee")
    assert version.tags["tightfit.trial"] == str(result.trial)
    assert version.tags["tightfit.profile"] == "cpu-ort-fast"
    assert version.tags["sha256"] == sha256(result.path)
    mlflow.set_registry_uri(uri)
    pulled = Path(
        mlflow.artifacts.download_artifacts(
            artifact_uri="models:/e2e-cpu-ort-fast@knee", dst_path=str(tmp_path / "pulled")
        )
    )
    assert sha256(pulled / "model.onnx") == sha256(result.path)
    assert json.loads((pulled / "manifest.json").read_text())["trial"] == result.trial
    # an MLflow Model (onnx flavour, with a signature): pyfunc serves it with ONNX Runtime
    model = mlflow.pyfunc.load_model("models:/e2e-cpu-ort-fast@knee")
    [spec] = model.metadata.get_input_schema().inputs
    assert spec.shape[0] == -1  # the batch axis stays dynamic
    name, shape = spec.name, (3, *spec.shape[1:])
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    got = model.predict({name: x})
    got = got["output"] if isinstance(got, dict) else np.asarray(got)
    np.testing.assert_allclose(np.asarray(got), predict(result.path, {name: x}), atol=1e-5)


def test_rerun_resumes_to_more_trials(finished, tmp_path) -> None:
    import shutil

    config, outcome, _ = finished
    # on a copy of the work directory: the module's other tests see the 6-trial search
    workdir = tmp_path / "copy"
    shutil.copytree(outcome.workdir, workdir)
    more = config.model_copy(update={"n_trials": 8, "workdir": str(workdir)})
    before = outcome.profiles[0].study.user_attrs["int8_formats_measured"]
    again = run_search(more)
    study = load_study(more, "cpu-ort-fast", workdir)
    assert study.user_attrs["int8_formats_measured"] == before  # chosen once, not re-measured
    assert (
        len(study.get_trials(states=(TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED))) == 8
    )
    assert len(trial_runs(workdir)) == 8  # no duplicated runs
    assert len(again.profiles[0].front) >= 1
    assert len(load_study(config, "cpu-ort-fast", outcome.workdir).trials) == 6  # untouched


def test_workdir_of_another_search_is_refused(finished) -> None:
    config, outcome, _ = finished
    with pytest.raises(WorkdirError, match="belongs to search 'e2e'"):
        prepare_workdir(config.model_copy(update={"name": "other"}))
    with pytest.raises(WorkdirError, match="different model, data, space"):
        prepare_workdir(config.model_copy(update={"seed": 9}))


def test_failing_candidates_fail_their_trials_not_the_study(tmp_path, fast_profile_file) -> None:
    config = search_config(
        tmp_path,
        fast_profile_file,
        trial_timeout_s=0.001,
        n_trials=3,
        name="e2e",
        sensitivity={"enabled": False},  # its tasks would warm the workers: trials run faster
        # and so would int8_format auto's two uniform-int8 builds: no int8 in this space
        space={"prune": {"ratios": [0.0, 0.25, 0.5]}, "quantize": {"enabled": False}},
    )
    outcome = run_search(config)
    [profile] = outcome.profiles
    failed = profile.study.get_trials(states=(TrialState.FAIL,))
    assert profile.n_failed == 3 and len(failed) == 3
    assert all("timed out" in t.user_attrs["error"] for t in failed)
    assert front_frame(profile.study).empty


@pytest.fixture()
def ui_server(finished):
    """`tightfit ui` on a free localhost port; yields (base URL, printed lines)."""
    import os
    import signal
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    _, outcome, _ = finished
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
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
    dom = subprocess.run(
        [chromium, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=180
    ).stdout
    assert shot.stat().st_size > 20_000  # a rendered page, not a blank one
    assert "Pareto front (red), feasible (blue)" in dom  # the section of the saved view
    assert "latency_ms vs. accuracy" in dom  # the scatter card (the UI titles it by its axes)
    assert "Parallel Coordinates" in dom
    assert "cpu-ort-fast-trial-0000" in dom  # the trial runs are listed
    assert "cpu-ort-fast-pareto-front" not in dom  # the summary run is filtered out of the chart
    table_url = url.replace("compareRunsMode=CHART", "compareRunsMode=TABLE")
    table = subprocess.run(
        [chromium, *flags, "--dump-dom", table_url], capture_output=True, text=True, timeout=180
    ).stdout
    for column in ("accuracy", "latency_ms", "speedup", "size_mb", "tightfit.pareto"):
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


def test_study_in_a_database_given_by_the_config(tmp_path: Path, fast_profile_file: Path) -> None:
    """optuna.storage: the study lives in a database (here SQLite), not the work directory."""
    import optuna

    from tests.helpers import tightfit

    url = f"sqlite:///{tmp_path / 'studies.db'}"
    workdir = tmp_path / "work"
    config = search_config(
        workdir, fast_profile_file, n_trials=3, name="indb", optuna={"storage": url}
    )
    run_search(config)
    assert not (workdir / "optuna.journal").exists()
    study = optuna.load_study(study_name="indb:cpu-ort-fast", storage=url)
    done = (TrialState.COMPLETE, TrialState.PRUNED)  # pruned: stopped by staged evaluation
    assert len(study.get_trials(states=done)) == 3
    shown = tightfit("pareto", "--workdir", str(workdir))  # finds the study through the config
    assert shown.returncode == 0, shown.stderr
    assert "Pareto front" in shown.stdout


def test_a_baseline_strategy_runs_its_sweep_alone(tmp_path, fast_profile_file) -> None:
    """``strategy: global_magnitude``: the baseline, then its seeded sweep; no sampler trial.
    Every candidate prunes by one global threshold, so none is factorized."""
    config = search_config(
        tmp_path / "work",
        fast_profile_file,
        name="gmp",
        strategy="global_magnitude",
        n_trials=4,
        staged={"enabled": False},
    )
    outcome = run_search(config)
    study = outcome.profiles[0].study
    ran = [t for t in study.trials if t.state.is_finished()]  # the rest of the sweep waits
    kinds = [t.user_attrs.get("seed_kind") for t in ran]
    assert kinds == ["baseline"] + ["global_magnitude"] * 3
    candidates = [json.loads(t.user_attrs["candidate"]) for t in ran[1:]]
    assert not any(c["rank"] for c in candidates) and any(c["prune"] for c in candidates)
    again = run_search(config.model_copy(update={"workdir": str(tmp_path / "again")}))
    assert [t.params for t in again.profiles[0].study.trials] == [t.params for t in study.trials]
    assert len(study.trials) > 4  # the whole sweep was planned: a rerun with more trials goes on


def test_a_failed_remeasurement_loses_only_itself(loose, monkeypatch, caplog) -> None:
    """Runs last on the ``loose`` search: one more trial changes the set to re-measure, and the
    rebuild fails. The search still ends with its trials, and the old record stands."""
    import logging

    from tightfit.workspace import Workspace

    config, outcome = loose
    before = load_study(config, "cpu-ort-fast", outcome.workdir).user_attrs["remeasured_jointly"]

    def broken(*args, **kwargs):
        raise RuntimeError("cannot rebuild")

    monkeypatch.setattr(Workspace, "rebuild", broken)  # in the driver; workers do not rebuild
    more = config.model_copy(update={"n_trials": 6})
    with caplog.at_level(logging.WARNING, logger="tightfit.search._driver"):
        again = run_search(more)
    study = load_study(more, "cpu-ort-fast", outcome.workdir)
    assert len(_measured_compressed(study)) > len(before["trials"])  # a new set to re-measure
    assert study.user_attrs["remeasured_jointly"] == before
    assert "re-measuring together failed (RuntimeError: cannot rebuild)" in caplog.text
    assert len(again.profiles[0].front) >= 1
