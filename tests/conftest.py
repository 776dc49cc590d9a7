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
        sensitivity={"enabled": True},
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
        latency={"cache_dir": str(workdir / "lc"), "remeasure": "measured"},
    )
    return config, run_search(config)


# ``make test`` runs the suite on two pytest-xdist workers. Each worker builds its own session
# and module fixtures, so the tests that share a costly one run on one worker, as one unit of
# work; so do the Ray-cluster tests, which share the machine's Ray address file. xdist's own
# ``--dist loadgroup`` cannot do it under pytest 9 (it renames ``item._nodeid``, which pytest 9
# no longer reads): the scheduler below groups by file, and collection refuses a test that
# shares a fixture from a file the table does not name.
SHARED_SEARCHES = {"finished", "loose"}
XDIST_GROUPS = {
    # the session's searches
    "tests/search/test_search_e2e.py": "shared-search",
    "tests/evaluators/test_cache_e2e.py": "shared-search",
    "tests/runs/test_tracker.py": "shared-search",
    "tests/runs/test_export_e2e.py": "shared-search",
    "tests/runs/test_mlflow_e2e.py": "shared-search",
    "tests/search/test_cluster.py": "ray-cluster",
    "tests/search/test_submit.py": "ray-cluster",
    # module-scoped fixtures: the file is the unit
    **{
        path: path
        for path in (
            "tests/kernels/test_depth.py",
            "tests/kernels/test_generation.py",
            "tests/kernels/test_pretrained_archs.py",
            "tests/search/test_evaluate.py",
            "tests/search/test_perplexity_e2e.py",
            "tests/test_sources.py",
        )
    },
}


def _file(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


def _shares_a_fixture(item: pytest.Item) -> bool:
    if set(getattr(item, "fixturenames", ())) & SHARED_SEARCHES:
        return True
    info = getattr(item, "_fixtureinfo", None)
    return any(
        defs and defs[-1].scope == "module"
        for defs in getattr(info, "name2fixturedefs", {}).values()
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        path = _file(item.nodeid)
        if path not in XDIST_GROUPS and _shares_a_fixture(item):
            raise pytest.UsageError(
                f"{item.nodeid} shares a session search or a module-scoped fixture: add "
                f"{path!r} to XDIST_GROUPS in tests/conftest.py, or each pytest-xdist worker "
                "builds the fixture again"
            )


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    """Load scheduling whose units are XDIST_GROUPS's groups, and single tests elsewhere."""
    from xdist.scheduler import LoadScopeScheduling

    class GroupScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return XDIST_GROUPS.get(_file(nodeid), nodeid)

    return GroupScheduling(config, log)
