"""The supported exporter (``exporter: dynamo``): its nodes map to the same modules as the
TorchScript exporter's, BatchNorm folded into a Conv included, and every kernel runs on it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from tests import models
from tests.helpers import CNN_KERNELS
from tightfit.config import CallableSpec, SpaceSpec
from tightfit.evaluators import predict
from tightfit.exceptions import ConfigError
from tightfit.hardware_profiles import HardwareProfile, get_profile
from tightfit.kernels import compress, discover_units, get_kernel
from tightfit.kernels.export import export_onnx, nodes_by_module
from tightfit.spaces import Candidate
from tightfit.task import TaskData, load_data

pytest.importorskip("onnxscript")


def _mapping(model: torch.nn.Module, data: TaskData, exporter: str, path: Path) -> dict:
    example = data.example_inputs()
    out = export_onnx(model, example, data.input_names, path, opset=18, exporter=exporter)
    graph = onnx.load(out)
    return {m: sorted(graph_ops(graph, nodes)) for m, nodes in nodes_by_module(graph).items()}


def graph_ops(graph: onnx.ModelProto, names: list[str]) -> list[str]:
    ops = {n.name: n.op_type for n in graph.graph.node}
    return [ops[n] for n in names]


@pytest.mark.parametrize("family", ["resnet", "bert"])
def test_nodes_map_to_the_same_modules_as_torchscripts(
    family: str, digits: TaskData, tmp_path: Path
) -> None:
    if family == "resnet":  # a Conv + BatchNorm stem, folded by both exporters
        model, data = models.tiny_resnet(), digits
    else:
        pytest.importorskip("transformers")
        model, data = (
            models.tiny_bert(),
            load_data(CallableSpec(callable="tests.models:token_id_data")),
        )
    scripted = _mapping(model, data, "torchscript", tmp_path / "t.onnx")
    dynamo = _mapping(model, data, "dynamo", tmp_path / "d.onnx")
    assert dynamo == scripted and scripted
    with torch.no_grad():
        expected = model(*(torch.from_numpy(v[:16]) for v in data.validation.values())).numpy()
    got = predict(tmp_path / "d.onnx", {k: v[:16] for k, v in data.validation.items()})
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)


def test_a_gemm_head_quantizes_dynamically(tmp_path: Path) -> None:
    """The exporter's shapes for initializers are dropped: onnxruntime 1.31's dynamic quantizer
    transposes a Gemm's weight into a MatMul's and then failed shape inference on the stale
    entry, so every model with a Linear head lost dynamic int8 there."""
    from onnxruntime.quantization import quantize_dynamic

    data = load_data(CallableSpec(callable="tests.models:token_data"))
    path = export_onnx(
        models.token_mlp(), data.example_inputs(), data.input_names, tmp_path / "m.onnx"
    )
    graph = onnx.load(path)
    assert "Gemm" in {n.op_type for n in graph.graph.node}
    initializers = {t.name for t in graph.graph.initializer}
    assert graph.graph.value_info and not {v.name for v in graph.graph.value_info} & initializers
    quantize_dynamic(str(path), str(tmp_path / "q.onnx"), per_channel=True)
    quantized = onnx.load(tmp_path / "q.onnx")
    assert "MatMulInteger" in {n.op_type for n in quantized.graph.node}
    inputs = {k: v[:4] for k, v in data.validation.items()}
    assert predict(tmp_path / "q.onnx", inputs).shape == predict(path, inputs).shape


@pytest.mark.parametrize("kernel", CNN_KERNELS)
def test_every_kernel_runs_on_dynamo_graphs(kernel, tiny_model, tiny_ctx, digits, tmp_path) -> None:
    profile = tiny_ctx.profile.model_copy(update={"exporter": "dynamo"})
    ctx = dataclasses.replace(tiny_ctx, profile=profile)
    units = [
        u for u in discover_units(tiny_model, ctx, SpaceSpec()) if u.knob == get_kernel(kernel).knob
    ]
    assert units
    params = {u.param_name: u.choices[-1] if u.knob != "rank" else min(u.choices) for u in units}
    out = compress(tiny_model, Candidate.from_params("m", params), ctx, tmp_path / "c")
    graph = onnx.load(out.onnx_path)
    assert {o.domain: o.version for o in graph.opset_import}[""] == 18
    x = {"image": digits.validation["image"][:16]}
    got = predict(out.onnx_path, x)
    if get_kernel(kernel).stage == "torch":
        with torch.no_grad():
            expected = out.model(torch.from_numpy(x["image"])).numpy()
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)
    else:  # int8 on every planned layer: the plan reached the dynamo graph's nodes
        assert out.report["quantize"]["int8_engaged"] == 1.0


def test_the_exporter_and_its_opset_must_agree() -> None:
    shipped = get_profile("cpu-ort")
    raw = shipped.model_dump()
    assert shipped.exporter == "dynamo"  # the default: the supported exporter
    assert HardwareProfile.model_validate(raw).export_opset == 18
    assert HardwareProfile.model_validate({**raw, "exporter": "torchscript"}).export_opset == 17
    with pytest.raises((ValueError, ConfigError), match="dynamo exporter writes opset 18"):
        HardwareProfile.model_validate({**raw, "exporter": "dynamo", "opset": 17})


def test_the_recipe_fuses_a_dynamo_bert_through_onnxscript(fast_profile, tmp_path) -> None:
    """ONNX Runtime's optimizer knows TorchScript's attention pattern only; a dynamo graph is
    fused by onnxscript's ``optimize_for_ort`` into the same operators, and quantized after."""
    pytest.importorskip("transformers")
    from tests.conftest import make_ctx
    from tests.helpers import min_cosine, runtime_ops
    from tightfit.kernels.quantization import INTEGER_OPS
    from tightfit.kernels.recipe import attention_shape, build_recipe

    model = models.tiny_bert()
    data = load_data(CallableSpec(callable="tests.models:token_id_data"))
    profile = fast_profile.model_copy(update={"exporter": "dynamo"})
    ctx = make_ctx(model, data, profile, tmp_path, classifier=None)
    baseline = export_onnx(
        model, data.example_inputs(), data.input_names, tmp_path / "d.onnx", opset=18,
        exporter="dynamo",
    )  # fmt: skip
    ctx = dataclasses.replace(ctx, baseline_onnx=baseline)
    inputs = {k: v[:16] for k, v in data.validation.items()}
    reference = predict(baseline, inputs)
    for variant in ("fp32", "int8-dynamic"):
        path, info = build_recipe(
            variant, baseline, ctx, tmp_path / variant, attention_shape(model)
        )
        assert info["fusions"]["Attention"] == 2, info["fusions"]
        assert info["fusions"]["SkipLayerNormalization"] >= 3, info["fusions"]
        out = predict(path, inputs)
        # fused kernels round differently (0.99987 on ORT 1.20, 0.99999 on 1.32)
        assert min_cosine(out, reference) > (0.9995 if variant == "fp32" else 0.95), variant
        ops = runtime_ops(path, tmp_path / variant)
        # int8: the packed q/k/v weight in integers too (onnxscript's qkv_hidden_sizes, which
        # ONNX Runtime's quantizer refuses, is dropped where the three are equal; its mask,
        # which QAttention cannot take as attention_bias, is passed as mask_index)
        assert ("QAttention" if variant == "int8-dynamic" else "Attention") in ops, variant
        assert bool(ops & INTEGER_OPS) == variant.startswith("int8"), variant


def test_a_model_dynamo_cannot_export_falls_back_to_torchscript_on_record(
    fast_profile: HardwareProfile, tmp_path: Path
) -> None:
    from tightfit.config import config_from_dict
    from tightfit.workspace import Setup, Workspace

    config = config_from_dict(
        {"name": "f", "model": "tests.models:branches_the_same", "data": "tests.models:vectors"}
    )
    profile = fast_profile.model_copy(update={"exporter": "dynamo"})
    ws = Workspace(Setup.of(config, profile, tmp_path / "w"))
    record = ws.export_record
    assert record["exporter"] == "torchscript" and record["asked"] == "dynamo"
    reason = record["fallback_reason"]
    assert "\x1b" not in reason
    # torch.export's own summary of why, not its boilerplate ("step 1/3 ...")
    assert "data-dependent" in reason.lower() or "guard" in reason.lower(), reason
    assert ws.ctx.profile.exporter == "torchscript"  # every candidate follows the baseline
    units = discover_units(ws.model, ws.ctx, SpaceSpec())
    params = {u.param_name: 8 for u in units if u.knob == "bits"}
    out = compress(ws.model, Candidate.from_params(ws.model_id, params), ws.ctx, tmp_path / "c")
    graph = onnx.load(out.onnx_path)
    assert not any(p.key == "pkg.torch.onnx.name_scopes" for n in graph.graph.node
                   for p in n.metadata_props)  # fmt: skip
    asked = fast_profile.model_copy(update={"exporter": "torchscript"})
    plain = Workspace(Setup.of(config, asked, tmp_path / "w2"))
    assert plain.export_record == {"exporter": "torchscript"}  # asked for it: no fallback
