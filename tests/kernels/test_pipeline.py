"""Conformance over every registered kernel, and the ONNX name map."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.helpers import CNN_KERNELS
from tightfit.config import SpaceSpec
from tightfit.evaluators import predict
from tightfit.kernels import compress, discover_units, get_kernel, list_kernels
from tightfit.kernels.export import module_of_node
from tightfit.spaces import Candidate, CompressionSpace


def test_registry_order_and_unknown_name() -> None:
    assert list_kernels() == ["prune", "lowrank", "depth", "quantize"]
    with pytest.raises(KeyError, match="valid: depth, lowrank, prune, quantize"):
        get_kernel("distill")


def test_noop_candidate_gives_the_baseline_exactly(tiny_model, tiny_ctx, digits, tmp_path) -> None:
    out = compress(tiny_model, Candidate(base_model="m"), tiny_ctx, tmp_path / "noop")
    x = {"image": digits.validation["image"][:32]}
    np.testing.assert_array_equal(predict(out.onnx_path, x), predict(tiny_ctx.baseline_onnx, x))
    assert out.report == {}


@pytest.mark.parametrize("kernel", CNN_KERNELS)
def test_each_kernel_at_its_strongest_level_runs_and_exports(
    kernel, tiny_model, tiny_ctx, digits, tmp_path
) -> None:
    units = [
        u
        for u in discover_units(tiny_model, tiny_ctx, SpaceSpec())
        if u.knob == get_kernel(kernel).knob
    ]
    assert units, f"kernel {kernel} found nothing to do on a small ResNet"
    params = {u.param_name: u.choices[-1] if u.knob != "rank" else min(u.choices) for u in units}
    candidate = Candidate.from_params("m", params)
    a = compress(tiny_model, candidate, tiny_ctx, tmp_path / "a")
    b = compress(tiny_model, candidate, tiny_ctx, tmp_path / "b")
    assert a.onnx_path.read_bytes() == b.onnx_path.read_bytes()  # deterministic replay
    out = predict(a.onnx_path, {"image": digits.validation["image"][:16]})
    assert out.shape == (16, 10) and np.isfinite(out).all()
    if get_kernel(kernel).stage == "torch":  # ONNX equals the compressed torch model
        with torch.no_grad():
            ref = a.model(torch.from_numpy(digits.validation["image"][:16])).numpy()
        np.testing.assert_allclose(out, ref, atol=1e-4, rtol=1e-4)


def test_uniform_space_candidates_all_apply(tiny_model, tiny_ctx, tmp_path) -> None:
    space = CompressionSpace(discover_units(tiny_model, tiny_ctx, SpaceSpec()), "m")
    c = space.uniform(prune_ratio=0.5, rank_fraction=0.5, bits=8)
    assert c.prune and c.rank and c.bits
    assert compress(tiny_model, c, tiny_ctx, tmp_path / "u").onnx_path.exists()


@pytest.mark.parametrize(
    ("name", "paths"),
    [
        ("/stem/stem.0/Conv", ["stem", "stem.0"]),
        ("/layer1/shortcut/shortcut.0/Conv", ["layer1", "layer1.shortcut", "layer1.shortcut.0"]),
        ("/layer1/conv1/Conv", ["layer1", "layer1.conv1"]),
        ("/layer3/conv1/conv1.0/Conv", ["layer3", "layer3.conv1", "layer3.conv1.0"]),
        ("/fc/Gemm", ["fc"]),
    ],
)
def test_module_of_node(name: str, paths: list[str]) -> None:
    assert module_of_node(name) == paths


def test_the_profiles_opset_is_every_exports(tiny_model, tiny_ctx, digits, tmp_path) -> None:
    """A profile's ``opset`` reaches each candidate's graph, and int8 still engages at it."""
    import dataclasses

    import onnx

    profile = tiny_ctx.profile.model_copy(update={"opset": 20})
    ctx = dataclasses.replace(tiny_ctx, profile=profile)
    units = discover_units(tiny_model, ctx, SpaceSpec())
    params = {u.param_name: u.choices[1] for u in units if u.knob == "prune_ratio"}
    params.update({u.param_name: 8 for u in units if u.knob == "bits"})
    out = compress(tiny_model, Candidate.from_params("m", params), ctx, tmp_path / "opset20")
    versions = {o.domain: o.version for o in onnx.load(out.onnx_path).opset_import}
    assert versions[""] == 20
    assert out.report["quantize"]["int8_engaged"] == 1.0
    x = {"image": digits.validation["image"][:16]}
    assert predict(out.onnx_path, x).shape == (16, 10)
    raw = tiny_ctx.profile.model_dump()
    with pytest.raises(ValueError, match="torchscript exporter writes opset 20 at most"):
        tiny_ctx.profile.model_validate({**raw, "exporter": "torchscript", "opset": 21})
    with pytest.raises(ValueError, match="opset"):
        tiny_ctx.profile.model_validate({**raw, "opset": 22})
