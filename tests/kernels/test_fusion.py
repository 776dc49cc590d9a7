"""Candidates on fused graphs (``kernels.fusion``): a transformer's baseline and every candidate
are fused as a deployment on ONNX Runtime runs them, and the per-layer plan still reaches the
fused nodes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from tests import models
from tests.conftest import make_ctx
from tests.helpers import min_cosine, runtime_ops
from tightfit.config import CallableSpec, SpaceSpec
from tightfit.evaluators import predict
from tightfit.hardware_profiles import HardwareProfile
from tightfit.kernels import compress, discover_units
from tightfit.kernels.fusion import fuse_for
from tightfit.kernels.quantization import INTEGER_OPS
from tightfit.spaces import CompressionSpace
from tightfit.task import load_data

transformers = pytest.importorskip("transformers")

ATTENTION = "bert.encoder.layer.{}.attention.self"


def _dynamo(profile: HardwareProfile, **update: object) -> HardwareProfile:
    return profile.model_copy(update={"exporter": "dynamo", **update})


def _bert_ctx(profile: HardwareProfile, tmp_path: Path):  # type: ignore[no-untyped-def]
    model = models.tiny_bert()
    data = load_data(CallableSpec(callable="tests.models:token_id_data"))
    ctx = make_ctx(model, data, profile, tmp_path, classifier=None)
    fuse_for(profile, ctx.baseline_onnx, data.validation)  # as the workspace fuses a baseline
    return model, data, ctx


def test_fused_attention_is_one_int8_unit_of_its_module(fast_profile, tmp_path) -> None:
    model, data, ctx = _bert_ctx(_dynamo(fast_profile), tmp_path)
    ops = {n.op_type for n in onnx.load(str(ctx.baseline_onnx)).graph.node}
    assert {"Attention", "SkipLayerNormalization", "BiasGelu"} <= ops
    units = discover_units(model, ctx, SpaceSpec(lowrank={"enabled": False}))
    bits = {u.path: u for u in units if u.knob == "bits"}
    for layer in (0, 1):
        attention = bits[ATTENTION.format(layer)]
        assert attention.choices == (32, 8)  # QAttention: int8 (dynamic) or float
        [node] = attention.info["nodes"]
        assert node.endswith(f"{ATTENTION.format(layer)}/Attention")
        # the projections were packed into it: no unit of their own
        assert not {f"{ATTENTION.format(layer)}.{p}" for p in ("query", "key", "value")} & set(bits)
    assert "bert.encoder.layer.0.intermediate.dense" in bits  # the MatMuls keep theirs


def test_fused_candidates_run_int8_and_compute_what_the_model_does(fast_profile, tmp_path) -> None:
    """Heads and FFN neurons pruned by half (a layer of 4 heads keeps 2, so the fused Attention
    has another head count than the baseline's), in float and with every layer int8, and the
    unpruned model int8: each candidate is fused, its Attention runs as QAttention where int8,
    and every planned layer runs in integers."""
    model, data, ctx = _bert_ctx(_dynamo(fast_profile), tmp_path)
    units = discover_units(model, ctx, SpaceSpec(prune={"ratios": [0.0, 0.5]}))
    space = CompressionSpace(units, "bert")
    feed = {k: v[:16] for k, v in data.validation.items()}
    for prune, bits in ((0.5, 32), (0.5, 8), (0.0, 8)):
        candidate = space.uniform(prune_ratio=prune, bits=bits)
        out = compress(model, candidate, ctx, tmp_path / f"c{prune}-{bits}")
        assert out.report["fusions"]["Attention"] == 2, out.report
        ops = runtime_ops(out.onnx_path, tmp_path)
        with torch.no_grad():
            reference = out.model(*(torch.from_numpy(v) for v in feed.values())).numpy()
        got = predict(out.onnx_path, feed)
        if bits == 32:
            assert "Attention" in ops and not ops & INTEGER_OPS
            assert np.abs(got - reference).max() <= 1e-4 * np.abs(reference).max()
        else:
            assert "QAttention" in ops and "Attention" not in ops, (prune, ops)
            # the padding mask reaches it (QAttention's mask_index: onnxscript's attention_bias,
            # which the quantizer would drop, is rewritten into it)
            graph = onnx.load(str(out.onnx_path)).graph
            for node in (n for n in graph.node if n.op_type == "QAttention"):
                assert len(node.input) > 5 and node.input[5] == "attention_mask_mask_index"
            assert out.report["quantize"]["int8_engaged"] == 1.0
            assert min_cosine(got, reference) > 0.95


def test_graph_fusion_off_keeps_the_export(fast_profile, tmp_path) -> None:
    profile = _dynamo(fast_profile, graph_fusion="off")
    model, _, ctx = _bert_ctx(profile, tmp_path)
    ops = {n.op_type for n in onnx.load(str(ctx.baseline_onnx)).graph.node}
    assert "Attention" not in ops
    units = discover_units(model, ctx, SpaceSpec(lowrank={"enabled": False}))
    bits = {u.path for u in units if u.knob == "bits"}
    assert f"{ATTENTION.format(0)}.query" in bits and ATTENTION.format(0) not in bits
    candidate = CompressionSpace(units, "bert").uniform(bits=8)
    assert "fusions" not in compress(model, candidate, ctx, tmp_path / "c").report


def test_a_cnn_and_a_torchscript_graph_are_not_fused(fast_profile, tiny_ctx, tmp_path) -> None:
    assert fuse_for(_dynamo(fast_profile), tiny_ctx.baseline_onnx).counts == {}  # nothing
    _, _, ctx = _bert_ctx(fast_profile, tmp_path)  # the fast profile exports with TorchScript
    ops = {n.op_type for n in onnx.load(str(ctx.baseline_onnx)).graph.node}
    assert "Attention" not in ops


def test_an_attention_bias_that_is_not_the_padding_mask_keeps_its_layer_float(
    fast_profile, tmp_path
) -> None:
    """An Attention whose attention_bias is not computed from the 2-D padding mask (here: a
    float graph input) cannot move it to mask_index, and QAttention would drop it: that layer's
    Attention is refused int8 with the reason, and the other layer's keeps its unit."""
    from dataclasses import replace

    from tightfit.kernels.fusion import mask_as_index
    from tightfit.kernels.quantization import MASKED_ATTENTION, Quantization, masked_attention

    model, _, ctx = _bert_ctx(_dynamo(fast_profile), tmp_path)
    proto = onnx.load(str(ctx.baseline_onnx))
    assert not masked_attention(proto)  # the padding mask became mask_index
    [first] = [n for n in proto.graph.node if n.name.endswith(f"{ATTENTION.format(0)}/Attention")]
    bias = onnx.helper.make_tensor_value_info("bias", onnx.TensorProto.FLOAT, [1, 4, 8, 8])
    proto.graph.input.append(bias)
    inputs = list(first.input)[:5] + [""] * (5 - len(first.input))
    inputs[3] = ""  # no mask_index: the bias is all it has
    del first.input[:]
    first.input.extend([*inputs, "bias"])
    assert mask_as_index(proto) == 0  # a float input is not a padding mask
    assert masked_attention(proto) == {first.name}
    path = tmp_path / "biased.onnx"
    onnx.save(proto, str(path))
    biased = replace(ctx, baseline_onnx=path)
    spec = SpaceSpec(lowrank={"enabled": False})
    [refusal] = Quantization().refusals(model, biased, spec)
    assert (refusal.path, refusal.reason) == (ATTENTION.format(0), MASKED_ATTENTION)
    bits = {u.path for u in discover_units(model, biased, spec) if u.knob == "bits"}
    assert ATTENTION.format(0) not in bits and ATTENTION.format(1) in bits


def test_a_candidate_without_torch_changes_starts_from_the_fused_baseline(
    fast_profile, tmp_path, monkeypatch
) -> None:
    """int8 alone changes nothing in torch: where the context knows the baseline is the fused
    float graph (the workspace's), compress starts from it rather than exporting and fusing the
    same model again, and writes the graph the export would have."""
    import dataclasses

    from tightfit.kernels._base import SurgeryContext

    model, data, ctx = _bert_ctx(_dynamo(fast_profile), tmp_path)
    units = discover_units(model, ctx, SpaceSpec(lowrank={"enabled": False}))
    int8 = CompressionSpace(units, "bert").uniform(bits=8)
    exported = compress(model, int8, ctx, tmp_path / "exported")  # baseline_fusions unknown
    known = dataclasses.replace(ctx, baseline_fusions=exported.report["fusions"])

    def no_export(*args: object) -> None:
        raise AssertionError("exported again")

    monkeypatch.setattr(SurgeryContext, "export", no_export)
    reused = compress(model, int8, known, tmp_path / "reused")
    assert reused.report == exported.report  # fusions and int8_engaged included
    feed = {k: v[:16] for k, v in data.validation.items()}
    np.testing.assert_array_equal(
        predict(reused.onnx_path, feed), predict(exported.onnx_path, feed)
    )
    with pytest.raises(AssertionError, match="exported again"):  # a torch change still exports
        compress(model, CompressionSpace(units, "bert").uniform(prune_ratio=0.5), known, tmp_path)
