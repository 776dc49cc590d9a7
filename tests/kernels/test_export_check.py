"""The exported ONNX must compute what the model computes, on the data's own inputs."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import models
from tightfit.config import CallableSpec, config_from_dict
from tightfit.exceptions import ModelError
from tightfit.hardware_profiles import get_profile
from tightfit.kernels import export_onnx
from tightfit.kernels.export import verify_export
from tightfit.task import TaskData, load_data
from tightfit.workspace import Setup, Workspace


def test_a_faithful_export_passes(tmp_path: Path, digits: TaskData) -> None:
    model = models.tiny_resnet()
    path = export_onnx(model, digits.example_inputs(), digits.input_names, tmp_path / "m.onnx")
    assert verify_export(model, path, digits.validation) is None


def test_a_branch_baked_in_by_the_tracer_is_found(tmp_path: Path, digits: TaskData) -> None:
    """The TorchScript exporter (the dynamo exporter refuses such a model, and a search falls
    back to TorchScript for it) bakes the example's branch in, warning."""
    model = models.branch_on_input()
    warned: list[str] = []
    path = export_onnx(
        model,
        digits.example_inputs(),
        digits.input_names,
        tmp_path / "m.onnx",
        warned,
        exporter="torchscript",
    )
    mismatch = verify_export(model, path, digits.validation)
    assert mismatch is not None and "differs from torch's" in mismatch
    assert any("models.py" in w for w in warned)  # the tracer named the line


def test_the_search_refuses_such_a_model_naming_the_cause(tmp_path: Path) -> None:
    config = config_from_dict(
        {
            "name": "branchy",
            "model": {"callable": "tests.models:branch_on_input"},
            "data": {"callable": "digits"},
            "workdir": str(tmp_path / "work"),
        }
    )
    setup = Setup(config=config, profile=get_profile("cpu-ort"), cache_dir=str(tmp_path))
    with pytest.raises(ModelError, match="does not compute what the model computes") as info:
        Workspace(setup)
    assert "tracer warned at" in str(info.value) and "models.py" in str(info.value)
    assert load_data(CallableSpec(callable="digits"))  # the data itself was fine
