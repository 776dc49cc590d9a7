"""Shared fixtures: real data (scikit-learn digits), small real models, a fast profile."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests import models
from tests.helpers import DISTILL, search_config
from tightfit.config import CallableSpec, SpaceSpec
from tightfit.hardware_profiles import HardwareProfile, get_profile
from tightfit.kernels import SurgeryContext, export_onnx
from tightfit.task import TaskData, load_data

FAST_MEASUREMENT = {
    "warmup_s": 0.05,
    "rounds": 3,
    "max_rounds": 3,
    "min_block_s": 0.005,
    "min_iters_per_block": 2,
}


@pytest.fixture(scope="session", autouse=True)
def _latency_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Tests (and the CLI processes they start) never read or write the user's cache."""
    import os

    os.environ["TIGHTFIT_CACHE_DIR"] = str(tmp_path_factory.mktemp("tightfit-cache"))


@pytest.fixture(scope="session")
def fast_profile() -> HardwareProfile:
    """cpu-ort with a short measurement protocol (fast tests; accuracy of latency not asserted),
    the TorchScript exporter and U8S8 static int8.

    The searches that use it test the search, not the exporter: a dynamo export costs 20-30
    times a TorchScript one on these small models (README, "Exporters"), and paid per candidate
    it tripled the suite's time. The dynamo exporter, the default, has its own tests:
    ``tests/kernels/test_export_dynamo.py`` (every kernel on dynamo graphs), the generation and
    perplexity searches, and the shipped examples' searches in ``tests/test_examples.py``.
    """
    base = get_profile("cpu-ort")
    return base.model_copy(
        update={
            "measurement": base.measurement.model_copy(update=FAST_MEASUREMENT),
            "exporter": "torchscript",
            # U8S8 pinned: cpu-ort's auto measures S8S8 too, once per search
            # (tests/search/test_int8_format.py)
            "quantization": base.quantization.model_copy(update={"activation_type": "QUInt8"}),
        }
    )


@pytest.fixture(scope="session")
def fast_profile_file(
    tmp_path_factory: pytest.TempPathFactory, fast_profile: HardwareProfile
) -> Path:
    path = tmp_path_factory.mktemp("profiles") / "cpu-ort-fast.yaml"
    path.write_text(fast_profile.model_copy(update={"name": "cpu-ort-fast"}).to_yaml())
    return path


@pytest.fixture(scope="session")
def fast_dynamo_profile_file(
    tmp_path_factory: pytest.TempPathFactory, fast_profile: HardwareProfile
) -> Path:
    """The fast profile on the default exporter (dynamo): the ``loose`` search runs on it."""
    path = tmp_path_factory.mktemp("profiles") / "cpu-ort-fast.yaml"
    profile = fast_profile.model_copy(update={"name": "cpu-ort-fast", "exporter": "dynamo"})
    path.write_text(profile.to_yaml())
    return path


@pytest.fixture(scope="session")
def digits() -> TaskData:
    return load_data(CallableSpec(callable="digits"))


@pytest.fixture()
def tiny_model() -> torch.nn.Module:
    return models.tiny_resnet()


def make_ctx(
    model: torch.nn.Module,
    data: TaskData,
    profile: HardwareProfile,
    tmp: Path,
    classifier: str | None = "fc",
) -> SurgeryContext:
    example = data.example_inputs()
    baseline = export_onnx(
        model, example, data.input_names, tmp / "baseline.onnx", exporter=profile.exporter
    )
    return SurgeryContext(
        example_inputs=example,
        input_names=data.input_names,
        calibration=data.calibration,
        profile=profile,
        classifier=classifier,
        baseline_onnx=baseline,
    )


@pytest.fixture()
def tiny_ctx(
    tiny_model: torch.nn.Module, digits: TaskData, fast_profile: HardwareProfile, tmp_path: Path
) -> SurgeryContext:
    return make_ctx(tiny_model, digits, fast_profile, tmp_path)


@pytest.fixture()
def default_space() -> SpaceSpec:
    return SpaceSpec()


@pytest.fixture(scope="session")
def finished(tmp_path_factory, fast_profile_file):
    """The session's main small search (tests.helpers.search_config), distilling its pruned and
    factorized candidates; shared by the search, MLflow, export and cache tests."""
    from tightfit.runs import run_search

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


@pytest.fixture(scope="session")
def loose(tmp_path_factory, fast_dynamo_profile_file):
    """A search that no accuracy bound stops early: every candidate is measured, then measured
    again with the others at the end (``latency.remeasure: measured``); exported by dynamo,
    the default exporter."""
    from tightfit.runs import run_search

    workdir = tmp_path_factory.mktemp("loose")
    config = search_config(
        workdir,
        fast_dynamo_profile_file,
        name="loose",
        n_trials=5,
        constraints={"max_accuracy_drop": 1.0},
        sensitivity={"enabled": False},
        latency={"cache_dir": str(workdir / "lc"), "remeasure": "measured"},
    )
    return config, run_search(config)
