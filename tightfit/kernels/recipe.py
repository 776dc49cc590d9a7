"""The standard deployment recipe: what a user gets in a minute without tightfit.

Every reported speedup stands beside it (design decision 12). Per profile:

- ONNX Runtime on a CPU: ``fp32`` (the graph ONNX Runtime's offline transformer optimizer
  fuses, where it fuses anything: Attention, SkipLayerNormalization, BiasGelu...; otherwise the
  export as it is, which the runtime optimizes when it opens it, as it does every candidate);
  ``int8-dynamic`` (``quantize_dynamic`` of that graph, weights per channel: the recipe for
  transformers); ``int8-static`` (``quant_pre_process`` with its graph optimization, then
  ``quantize_static`` in Q/DQ on every operator it takes, calibrated on the task's calibration
  data, U8S8 per channel: the recipe for CNNs);
- GPU profiles: ``fp16`` (the whole graph in fp16, inputs and outputs fp32);
- a generation profile (a decoder LM on a CPU): ``fp32``, ``int8-dynamic`` and ``int4``
  (``MatMulNBits`` on every MatMul with constant weights, blocks of 32, symmetric: the weights
  onnxruntime-genai's builder writes with ``-p int4``; its own graph is measured beside this
  in ``benchmarks/llm.py``).

Each variant is built from the baseline's ONNX alone: no pruning, no rank, no per-layer choice.
The quantization settings (activation and weight types, per channel, reduce range) are the
profile's, as they are for tightfit's own candidates.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import onnx
from torch import nn

from tightfit.hardware_profiles import HardwareProfile
from tightfit.kernels._base import SurgeryContext
from tightfit.kernels.fusion import fused_graph

log = logging.getLogger(__name__)


def recipe_variants(profile: HardwareProfile) -> tuple[str, ...]:
    """The recipe's variants for ``profile`` (what a user would try on that target)."""
    if profile.is_gpu:
        return ("fp16",)
    if profile.runtime != "onnxruntime":
        return ()
    if profile.generation is not None:  # a decoder LM: weight-only int4 is its standard recipe
        return ("fp32", "int8-dynamic") + (("int4",) if "int4" in profile.precisions else ())
    return ("fp32", "int8-dynamic", "int8-static")


def attention_shape(model: nn.Module) -> tuple[int, int] | None:
    """(heads, hidden width) of a Hugging Face transformer's config; None for other models.

    The transformer optimizer needs both: left to detect them (0), it found no Attention in
    tightfit's exports, whose shapes are dynamic; told them, it fused every layer's."""
    for m in model.modules():
        config = getattr(m, "config", None)
        heads = getattr(config, "num_attention_heads", None)
        width = getattr(config, "hidden_size", None)
        if isinstance(heads, int) and isinstance(width, int):
            return heads, width
    return None


def build_recipe(
    variant: str,
    baseline: Path,
    ctx: SurgeryContext,
    out_dir: Path,
    attention: tuple[int, int] | None = None,
    fused: tuple[Path, dict[str, int]] | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Build ``variant`` of the recipe from the ``baseline`` ONNX into ``out_dir``; returns the
    file and what was done (the fused operators, the quantizer's settings). ``attention``:
    the model's (heads, width), see ``attention_shape``. ``fused``: ``fused_graph``'s result,
    when several variants are built from one baseline (the optimizer then runs once)."""
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from tightfit._ort import cache_layout
    from tightfit.kernels.precision import to_float16
    from tightfit.kernels.quantization import (
        _quantize_nbits,
        _Reader,
        _reduce_range,
        masked_attention,
    )

    out_dir.mkdir(parents=True, exist_ok=True)
    logging.getLogger("onnxruntime.quantization").setLevel(logging.ERROR)
    if variant == "fp16":
        return to_float16(baseline, out_dir / "fp16.onnx"), {}
    graph, fusions = fused or fused_graph(baseline, out_dir, attention)
    info: dict[str, Any] = {"fusions": fusions}
    if variant == "fp32":
        return graph, info
    settings = ctx.profile.quantization
    reduce_range = _reduce_range(ctx)
    info.update(per_channel=settings.per_channel, reduce_range=reduce_range)
    if variant == "int8-dynamic":
        dst = out_dir / "int8-dynamic.onnx"
        masked = masked_attention(onnx.load(str(graph), load_external_data=False))
        if masked:
            info["float_attention"] = len(masked)  # int8 would drop their masks
        quantize_dynamic(
            str(graph),
            str(dst),
            nodes_to_exclude=sorted(masked),
            per_channel=settings.per_channel,
            reduce_range=reduce_range,
            weight_type=QuantType.QInt8,
            # the fused operators (com.microsoft) have no ONNX shape inference: float is right
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
        return dst, info
    if variant == "int8-static":
        pre = out_dir / "int8-static-pre.onnx"
        quant_pre_process(str(graph), str(pre), skip_symbolic_shape=bool(fusions))
        dst = out_dir / "int8-static.onnx"
        quantize_static(
            str(pre),
            str(dst),
            _Reader(ctx.calibration, cache=cache_layout(pre)),
            quant_format=QuantFormat.QDQ,
            per_channel=settings.per_channel,
            reduce_range=reduce_range,
            activation_type=getattr(QuantType, settings.activations),
            weight_type=getattr(QuantType, settings.weight_type),
            calibrate_method=getattr(CalibrationMethod, settings.calibrate_method),
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
        return dst, info
    if variant == "int4":
        dst = out_dir / "int4.onnx"
        _quantize_nbits(graph, dst, None, 4, settings.int4_block_size)
        return dst, {**info, "block_size": settings.int4_block_size, "symmetric": True}
    raise ValueError(
        f"unknown recipe variant {variant!r}; choose from fp32, int8-dynamic, int8-static, int4, "
        "fp16"
    )
