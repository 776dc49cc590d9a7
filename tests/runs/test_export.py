"""The export's own logic, without a search: which trials a pick names, how an engine folder
appears (whole, or not at all), and what a manifest records of the software."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from tightfit.exceptions import TightfitError
from tightfit.keys import TrialAttr
from tightfit.runs.export import (
    STAGING,
    _pick,
    _publish,
    _ratios,
    _remove_staging,
    library_versions,
    profile_name,
)

OBJECTIVES = ["accuracy", "latency_ms", "size_mb"]


def _study(points: list[tuple[float, float, float]], feasible: list[bool]) -> optuna.Study:
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"])
    study.set_metric_names(OBJECTIVES)
    for values, ok in zip(points, feasible, strict=True):
        trial = study.ask()
        trial.set_constraint("accuracy_drop", -0.01 if ok else 0.05)
        study.tell(trial, list(values))
    return study


def test_a_pick_names_the_knee_the_front_or_a_complete_trial() -> None:
    study = _study(
        [(0.90, 1.0, 1.0), (0.89, 0.5, 0.6), (0.80, 0.2, 0.2), (0.95, 0.1, 0.1)],
        [True, True, True, False],  # the dominating trial 3 is infeasible
    )
    assert _pick(study, OBJECTIVES, "all") == [2, 1, 0]  # the front, fastest first
    assert _pick(study, OBJECTIVES, "knee") == [1]  # the balance of the three
    assert _pick(study, OBJECTIVES, "3") == [3]  # any complete trial, by number
    assert _pick(study, OBJECTIVES, "3, 0,3") == [3, 0]  # several, once each, in that order
    with pytest.raises(TightfitError, match="trial 9 is not a complete trial"):
        _pick(study, OBJECTIVES, "9")
    with pytest.raises(TightfitError, match="trial 9 is not a complete trial"):
        _pick(study, OBJECTIVES, "1,9")
    with pytest.raises(TightfitError, match="must be 'knee', 'all' or trial numbers"):
        _pick(study, OBJECTIVES, "best")


def test_no_feasible_point_is_said_plainly() -> None:
    study = _study([(0.5, 1.0, 1.0)], [False])
    for pick in ("knee", "all"):
        with pytest.raises(TightfitError, match="no feasible Pareto point yet"):
            _pick(study, OBJECTIVES, pick)


def test_an_engine_folder_replaces_the_old_one_whole(tmp_path: Path) -> None:
    target = tmp_path / "engines" / "e-trial0001"
    target.mkdir(parents=True)
    (target / "model.onnx").write_text("old")
    staging = target.with_name(f"{STAGING}{target.name}")
    staging.mkdir()
    (staging / "model.onnx").write_text("new")
    (staging / "manifest.json").write_text("{}")
    _publish(staging, target)
    assert sorted(p.name for p in target.iterdir()) == ["manifest.json", "model.onnx"]
    assert (target / "model.onnx").read_text() == "new"
    assert sorted(p.name for p in target.parent.iterdir()) == [target.name]
    leftover = target.with_name(f"{STAGING}e-trial0002")  # an interrupted export's
    leftover.mkdir()
    _remove_staging(target.parent)
    assert not leftover.exists() and target.exists()


def test_ratios_logged_and_now_with_their_intervals() -> None:
    class Latency:
        ratio, ratio_ci = 0.5, (0.48, 0.53)

    study = optuna.create_study()
    trial = study.ask()
    assert _ratios(trial, Latency()) == (None, (0.5, 0.48, 0.53))  # nothing logged
    trial.set_user_attr(TrialAttr.LATENCY, {"ratio": 0.52, "ratio_ci": [0.5, 0.55]})
    assert _ratios(study.trials[0], Latency()) == ((0.52, 0.5, 0.55), (0.5, 0.48, 0.53))


def test_the_manifest_names_the_software_and_the_profile(tmp_path: Path) -> None:
    versions = library_versions()
    assert {"python", "tightfit", "torch", "onnxruntime", "optuna"} <= set(versions)
    assert all(v and v != "not installed" for k, v in versions.items() if k != "tightfit")
    assert profile_name("cpu-ort") == "cpu-ort"
    (tmp_path / "p.yaml").write_text("name: my-cpu\n")
    assert profile_name(str(tmp_path / "p.yaml")) == "my-cpu"
