"""A kernel of a new kind, written in one file and registered with one line: discovery finds
its units, the space samples them, the Candidate carries its knob, the pipeline applies it
and the export runs it; nothing else in tightfit changes.

The kernel here scales the output of every Conv layer (a stand-in for, say, a kernel that
drops whole blocks): its knob ``gain`` and its settings (``space.kernels.scale.factors``) are
its own.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import optuna
import pytest
from torch import nn

from tests import models
from tests.conftest import make_ctx
from tightfit.config import SpaceSpec
from tightfit.evaluators import predict
from tightfit.exceptions import ConfigError
from tightfit.kernels import Kernel, SurgeryContext, _registry, compress, discover
from tightfit.spaces import Candidate, CompressionSpace, Unit


class ScaleConvs(Kernel):
    name: ClassVar[str] = "scale"
    knob: ClassVar[str] = "gain"
    stage: ClassVar[str] = "torch"
    order: ClassVar[int] = 5  # before pruning

    def units(self, model: nn.Module, ctx: SurgeryContext, space: SpaceSpec) -> list[Unit]:
        factors = self.settings(space).get("factors")
        if not factors:
            return []
        choices = (1.0, *(float(f) for f in factors))  # the no-op first
        return [
            Unit(path, self.knob, choices)
            for path, m in model.named_modules()
            if isinstance(m, nn.Conv2d)
        ]

    def apply(self, model: nn.Module, plan: dict[str, Any], ctx: SurgeryContext) -> dict[str, Any]:
        modules = dict(model.named_modules())
        for path, factor in plan.items():
            modules[path].weight.data.mul_(factor)
        return {"scaled": len(plan)}


@pytest.fixture()
def registered(monkeypatch):
    """The one registry line (``register_kernel``), undone after the test."""
    monkeypatch.setattr(_registry, "_KERNELS", dict(_registry._KERNELS))
    _registry.register_kernel(ScaleConvs)


def _space(**kernels: Any) -> SpaceSpec:
    return SpaceSpec.model_validate(
        {"lowrank": {"enabled": False}, "quantize": {"enabled": False}, "kernels": kernels}
    )


def test_a_new_kind_of_kernel_runs_through_the_whole_pipeline(
    registered, digits, fast_profile, tmp_path
) -> None:
    model = models.tiny_resnet()
    ctx = make_ctx(model, digits, fast_profile, tmp_path)
    units, _ = discover(model, ctx, _space(scale={"factors": [0.5]}))
    gains = [u for u in units if u.knob == "gain"]
    assert gains and all(u.choices == (1.0, 0.5) for u in gains)
    assert any(u.knob == "prune_ratio" for u in units)  # beside the built-in kernels

    space = CompressionSpace(units, "m", 0)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    levels = {u.level_name: 0 for u in space.units} | {gains[0].level_name: 1}
    candidate = space.candidate(levels)
    assert candidate.other == {"gain": {gains[0].path: 0.5}} and not candidate.is_baseline
    assert Candidate.from_json(candidate.to_json()) == candidate  # what a study keeps
    assert space.params_of(candidate)[gains[0].level_name] == 1  # what enqueue_trial takes
    assert space.suggest(study.ask()).base_model == "m"  # the sampler sees its levels

    baseline = compress(model, space.baseline(), ctx, tmp_path / "b").onnx_path
    scaled = compress(model, candidate, ctx, tmp_path / "s")
    assert scaled.report["scale"] == {"scaled": 1}
    x = {"image": digits.validation["image"][:8]}
    assert not np.allclose(predict(baseline, x), predict(scaled.onnx_path, x))


def test_built_in_candidates_serialise_as_before() -> None:
    c = Candidate(base_model="m", prune={"a": 0.5})
    assert "other" not in c.to_json()
    assert c.to_params() == {"a.prune_ratio": 0.5}


def test_a_kernel_named_in_the_config_but_not_registered_is_refused(
    digits, fast_profile, tmp_path
) -> None:
    model = models.tiny_resnet()
    ctx = make_ctx(model, digits, fast_profile, tmp_path)
    with pytest.raises(ConfigError, match="space.kernels: unknown kernel 'scale'"):
        discover(model, ctx, _space(scale={"factors": [0.5]}))
