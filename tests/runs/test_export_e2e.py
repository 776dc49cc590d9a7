"""Exporting a finished search's winners: the knee, the whole front re-measured together, and
the MLflow Model Registry (the session's ``finished`` and ``loose`` searches)."""

from __future__ import annotations

import json
from pathlib import Path

import onnxruntime as ort
import pytest
from mlflow import MlflowClient

from tightfit.runs._files import sha256
from tightfit.runs.export import export

pytestmark = pytest.mark.slow


def test_export_knee_loads_in_a_fresh_session(finished, tmp_path) -> None:
    config, outcome, _ = finished
    [result] = export(outcome.workdir, pick="knee", out=tmp_path)
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image"]
    manifest = json.loads(result.manifest.read_text())
    assert manifest["files"]["model.onnx"]["sha256"] == sha256(result.path)
    assert manifest["candidate"]["base_model"] and manifest["profile"]["name"] == "cpu-ort-fast"
    assert abs(result.quality_change) < 1e-9  # deterministic replay: the same accuracy
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


def test_export_all_is_the_front(loose, tmp_path) -> None:
    config, outcome = loose
    front = sorted(int(t) for t in outcome.profiles[0].front["trial"])
    assert front  # its size is the search's: one point may dominate the others
    assert sorted(r.trial for r in export(outcome.workdir, pick="all", out=tmp_path)) == front


def test_export_of_several_remeasures_them_together(loose, tmp_path) -> None:
    from optuna.trial import TrialState

    config, outcome = loose
    study = outcome.profiles[0].study
    numbers = [t.number for t in study.get_trials(states=(TrialState.COMPLETE,))][:2]
    assert len(numbers) == 2  # no accuracy bound: every trial of this search completes
    results = export(outcome.workdir, pick=f"{numbers[0]}, {numbers[1]}", out=tmp_path)
    assert [r.trial for r in results] == numbers
    manifests = [json.loads(r.manifest.read_text()) for r in results]
    for number, m in zip(numbers, manifests, strict=True):
        assert m["latency"]["measured_with_trials"] == [n for n in numbers if n != number]
        assert m["latency"]["environment"].get("measured_jointly_with") == "1"
        assert m["metrics_measured"]["latency_ms"] > 0
    # one set of rounds for both
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
