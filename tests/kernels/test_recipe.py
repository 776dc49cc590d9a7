"""The standard deployment recipe, built from a real baseline export."""

from __future__ import annotations

from tests import models
from tests.conftest import make_ctx
from tests.helpers import min_cosine, runtime_ops
from tightfit.config import CallableSpec
from tightfit.evaluators import predict
from tightfit.hardware_profiles import get_profile
from tightfit.kernels.quantization import INTEGER_OPS
from tightfit.kernels.recipe import attention_shape, build_recipe, recipe_variants
from tightfit.task import load_data


def test_variants_per_target() -> None:
    assert recipe_variants(get_profile("cpu-ort")) == ("fp32", "int8-dynamic", "int8-static")
    assert recipe_variants(get_profile("gpu-torch-cuda-fp16")) == ("fp16",)


def test_recipe_fuses_a_bert_encoder_and_quantizes_the_fused_graph(tmp_path, fast_profile) -> None:
    model = models.tiny_bert()
    assert attention_shape(model) == (4, 64)
    assert attention_shape(models.tiny_resnet()) is None
    data = load_data(CallableSpec(callable="tests.models:token_id_data"))
    ctx = make_ctx(model, data, fast_profile, tmp_path, classifier=None)
    inputs = {k: v[:16] for k, v in data.validation.items()}
    reference = predict(ctx.baseline_onnx, inputs)
    for variant in ("fp32", "int8-dynamic", "int8-static"):
        path, info = build_recipe(
            variant, ctx.baseline_onnx, ctx, tmp_path / variant, attention_shape(model)
        )
        # exported with eager attention, so the optimizer fuses every layer's attention
        assert info["fusions"]["Attention"] == 2 and info["fusions"]["SkipLayerNormalization"] == 4
        out = predict(path, inputs)
        # fused kernels round differently (0.99987 on ORT 1.20, 0.99999 on 1.32)
        assert min_cosine(out, reference) > (0.9995 if variant == "fp32" else 0.95), variant
        ops = runtime_ops(path, tmp_path / variant)
        assert "Attention" in ops or "QAttention" in ops, variant
        assert bool(ops & INTEGER_OPS) == variant.startswith("int8"), variant


def test_recipe_on_a_cnn_is_its_export_then_uniform_int8(tiny_ctx, tmp_path) -> None:
    path, info = build_recipe("fp32", tiny_ctx.baseline_onnx, tiny_ctx, tmp_path / "fp32")
    assert info["fusions"] == {} and path == tiny_ctx.baseline_onnx  # nothing to fuse offline
    path, info = build_recipe("int8-static", tiny_ctx.baseline_onnx, tiny_ctx, tmp_path / "s")
    ops = runtime_ops(path, tmp_path / "s")
    assert "QLinearConv" in ops and "Conv" not in ops  # every Conv runs in integers
    assert info["per_channel"] is tiny_ctx.profile.quantization.per_channel
