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

log = logging.getLogger(__name__)

#: operators whose presence after the transformer optimizer says it fused something
FUSED_OPS = (
    "Attention",
    "MultiHeadAttention",
    "SkipLayerNormalization",
    "EmbedLayerNormalization",
    "BiasGelu",
    "FastGelu",
    "Gelu",
    "LayerNormalization",
)


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


def fuse_transformer(
    src: Path, dst: Path, attention: tuple[int, int] | None = None
) -> dict[str, int]:
    """ONNX Runtime's transformer optimizer (``model_type="bert"``) on ``src``, with the
    model's ``attention`` shape (heads, width) where known. Writes ``dst`` and returns the fused
    operators' counts when it fused any; when it fused none (a CNN, or attention it does not
    recognise), writes nothing and returns {}.

    A graph from the dynamo exporter goes through onnxscript's ``optimize_for_ort`` instead:
    ONNX Runtime's optimizer recognises TorchScript's patterns only (on all-MiniLM-L6-v2's
    dynamo graph it fused no Attention; onnxscript fuses all six, see
    ``benchmarks/results/exporters.md``)."""
    if _from_dynamo(src):
        return _fuse_with_onnxscript(src, dst)
    from onnxruntime.transformers.optimizer import optimize_model

    logging.getLogger("onnxruntime.transformers").setLevel(logging.ERROR)
    logging.getLogger("fusion_base").setLevel(logging.ERROR)
    logging.getLogger("onnx_model_bert").setLevel(logging.ERROR)
    heads, width = attention or (0, 0)
    optimized = optimize_model(str(src), model_type="bert", num_heads=heads, hidden_size=width)
    stats = optimized.get_fused_operator_statistics()
    fused = {op: int(n) for op, n in stats.items() if op in FUSED_OPS and n}
    if fused:
        optimized.save_model_to_file(str(dst))
    return fused


def _from_dynamo(path: Path) -> bool:
    """Whether the dynamo exporter wrote ``path`` (its nodes carry their module scopes)."""
    import onnx

    from tightfit.kernels.export import NAME_SCOPES

    graph = onnx.load(str(path), load_external_data=False).graph
    return any(p.key == NAME_SCOPES for n in graph.node for p in n.metadata_props)


def _fuse_with_onnxscript(src: Path, dst: Path) -> dict[str, int]:
    import onnx_ir as ir
    from onnxscript.rewriter.ort_fusions import optimize_for_ort

    model = ir.load(str(src))
    optimize_for_ort(model)  # in place: Attention, SkipLayerNormalization, BiasGelu, ...
    counts: dict[str, int] = {}
    for node in model.graph:
        if node.op_type in FUSED_OPS:
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    if counts:
        ir.save(model, str(dst))
    return counts


def fused_graph(
    baseline: Path, out_dir: Path, attention: tuple[int, int] | None = None
) -> tuple[Path, dict[str, int]]:
    """The graph the recipe's CPU variants start from, and the fused operators' counts: the
    transformer optimizer's output where it fused anything, else ``baseline`` itself."""
    out_dir.mkdir(parents=True, exist_ok=True)
    fused_path = out_dir / "fused.onnx"
    fusions = fuse_transformer(baseline, fused_path, attention)
    return (fused_path if fusions else baseline), fusions


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
    from tightfit.kernels.quantization import _quantize_int4, _Reader, _reduce_range

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
        quantize_dynamic(
            str(graph),
            str(dst),
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
            activation_type=getattr(QuantType, settings.activation_type),
            weight_type=getattr(QuantType, settings.weight_type),
            calibrate_method=getattr(CalibrationMethod, settings.calibrate_method),
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
        return dst, info
    if variant == "int4":
        dst = out_dir / "int4.onnx"
        _quantize_int4(graph, dst, None)
        return dst, {**info, "block_size": 32, "symmetric": True}
    raise ValueError(
        f"unknown recipe variant {variant!r}; choose from fp32, int8-dynamic, int8-static, int4, "
        "fp16"
    )
