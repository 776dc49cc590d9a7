"""End to end on the real parts: Optuna journal, local Ray, MLflow SQLite, ONNX Runtime."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from optuna.trial import TrialState

from tests.helpers import search_config, trial_runs
from tightfit.exceptions import WorkdirError
from tightfit.runs import run_search
from tightfit.runs.pareto import front_frame
from tightfit.studies import load_study
from tightfit.workdir import prepare_workdir

pytestmark = pytest.mark.slow


def test_search_completes_with_a_front(finished) -> None:
    config, outcome, seen = finished
    [profile] = outcome.profiles
    study = profile.study
    done = study.get_trials(states=(TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED))
    assert len(done) == 6
    assert study.trials[0].user_attrs["is_baseline"]  # the baseline is enqueued first
    assert study.trials[1].user_attrs["seed_kind"] == "recipe"  # then the recipe, uniform int8
    assert set(json.loads(study.trials[1].user_attrs["candidate"])["bits"].values()) == {8}
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


def test_rerun_resumes_to_more_trials(finished, tmp_path) -> None:
    """A rerun with more trials goes on; a trial whose candidate an earlier one evaluated is
    told that trial's result (not built, not measured) and does not count."""
    import shutil

    config, outcome, _ = finished
    # on a copy of the work directory: the module's other tests see the 6-trial search
    workdir = tmp_path / "copy"
    shutil.copytree(outcome.workdir, workdir)
    more = config.model_copy(update={"n_trials": 8, "workdir": str(workdir)})
    before = outcome.profiles[0].study.user_attrs["int8_formats_measured"]
    done = load_study(more, "cpu-ort-fast", workdir)
    first = next(
        t for t in done.get_trials(states=(TrialState.COMPLETE,)) if not t.user_attrs["is_baseline"]
    )
    done.enqueue_trial(first.params)  # what a sampler proposing it again amounts to
    again = run_search(more)
    study = load_study(more, "cpu-ort-fast", workdir)
    assert study.user_attrs["int8_formats_measured"] == before  # chosen once, not re-measured
    finished_trials = study.get_trials(
        states=(TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED)
    )
    [repeat] = [t for t in finished_trials if "repeat_of" in t.user_attrs]
    assert repeat.user_attrs["repeat_of"] == first.number
    assert repeat.state == TrialState.PRUNED and repeat.constraints == first.constraints
    assert repeat.user_attrs["stage"] == "repeat" and "report" not in repeat.user_attrs
    assert len(finished_trials) == 8 + 1  # the repeat did not count toward n_trials
    runs = {int(r.data.tags["tightfit.trial"]): r for r in trial_runs(workdir)}
    assert len(runs) == 9  # no duplicated runs
    assert runs[repeat.number].data.tags["tightfit.status"] == "repeat"
    latency = dict(zip(more.objectives, first.values, strict=True))["latency_ms"]
    assert runs[repeat.number].data.metrics["latency_ms"] == pytest.approx(latency)
    assert repeat.number not in set(again.profiles[0].front["trial"])
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


def test_the_recipe_strategy_runs_the_baseline_and_uniform_int8(tmp_path, fast_profile_file):
    """``strategy: recipe``: the baseline, then the recipe's int8; n_trials beyond them is not
    spent on anything else."""
    config = search_config(
        tmp_path / "work",
        fast_profile_file,
        name="recipe",
        strategy="recipe",
        n_trials=5,
        staged={"enabled": False},
        latency={"recipe": False},
    )
    study = run_search(config).profiles[0].study
    assert [t.user_attrs.get("seed_kind") for t in study.trials] == ["baseline", "recipe"]
    assert all(t.state == TrialState.COMPLETE for t in study.trials)
    int8 = json.loads(study.trials[1].user_attrs["candidate"])
    assert set(int8["bits"].values()) == {8} and not int8["prune"] and not int8["rank"]
    assert study.trials[1].user_attrs["report"]["quantize"]["int8_engaged"] == 1.0


def test_a_failed_remeasurement_loses_only_itself(loose, monkeypatch, caplog) -> None:
    """Runs last on the ``loose`` search: one more trial changes the set to re-measure, and the
    rebuild fails. The search still ends with its trials, and the old record stands."""
    import logging

    from tightfit.search import _ray

    config, outcome = loose
    before = load_study(config, "cpu-ort-fast", outcome.workdir).user_attrs["remeasured_jointly"]

    def broken(*args, **kwargs):
        raise RuntimeError("cannot rebuild")

    # the rebuilds run as Ray tasks: the executor sends the patched function to the workers
    monkeypatch.setattr(_ray, "_rebuild_on_node", broken)
    more = config.model_copy(update={"n_trials": 6})
    with caplog.at_level(logging.WARNING, logger="tightfit.search._driver"):
        again = run_search(more)
    study = load_study(more, "cpu-ort-fast", outcome.workdir)
    assert len(_measured_compressed(study)) > len(before["trials"])  # a new set to re-measure
    assert study.user_attrs["remeasured_jointly"] == before
    assert "re-measuring together failed (RuntimeError: cannot rebuild)" in caplog.text
    assert len(again.profiles[0].front) >= 1
