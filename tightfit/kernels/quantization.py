"""Per-layer precision in the exported ONNX: int8 (static Q/DQ or dynamic) and 4-bit weight-only
MatMulNBits.

Precision lives in the file (design decision 7), so the same artifact serves ONNX Runtime and
TensorRT. int8 uses ONNX Runtime's ``quantize_static`` in QDQ format, calibrated on the task's
calibration data, restricted to the chosen layers' nodes (plus the cheap ops between them, so
that the runtime can fuse whole int8 chains). 4-bit uses ``MatMulNBitsQuantizer`` with
``accuracy_level=4`` (the fast CPU path), only for MatMul nodes with constant weights.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections import deque
from dataclasses import replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import onnx
from torch import nn

from tightfit._ort import cache_layout, predict, with_empty_cache
from tightfit.config import SpaceSpec
from tightfit.exceptions import CandidateError
from tightfit.hardware_profiles import HardwareProfile
from tightfit.kernels._base import Kernel, Refusal, SurgeryContext, Unit
from tightfit.kernels._registry import register_kernel
from tightfit.kernels.bias_correction import MAX_SAMPLES, WeightQuant, correct_bias, minmax_blocks
from tightfit.kernels.export import (
    COMPUTE_OPS,
    drop_unread_initializers,
    fold_weight_transposes,
    has_constant_weight,
    int_attribute,
    module_of_node,
    node_op_types,
    nodes_by_module,
    replace_nodes,
)

CALIBRATION_BATCH = 32
log = logging.getLogger(__name__)

#: ONNX Runtime operators that compute in integers (the ``com.microsoft`` ones included): a
#: planned int8 or 4-bit layer engages when its weight feeds one of them after graph optimization
INTEGER_OPS = frozenset(
    {
        "QLinearConv",
        "QLinearMatMul",
        "QGemm",
        "ConvInteger",
        "MatMulInteger",
        "MatMulIntegerToFloat",
        "DynamicQuantizeMatMul",
        "QAttention",
        "QLinearConvTranspose",
        "MatMulNBits",
    }
)


def cpu_has_vnni() -> bool:
    """True on x86 CPUs with VNNI / AMX (full-range U8S8 int8 is safe there)."""
    from tightfit._machine import cpu_environment

    flags = cpu_environment()["cpu_flags"].split(",")
    return any(f in flags for f in ("avx512_vnni", "avx_vnni", "amx_int8"))


class _Reader:
    """ONNX Runtime calibration data reader over named numpy arrays."""

    def __init__(
        self,
        data: dict[str, np.ndarray],
        batch: int = CALIBRATION_BATCH,
        cache: dict[str, tuple[int, int]] | None = None,
    ) -> None:
        n = len(next(iter(data.values())))
        self._batches = iter(
            [
                with_empty_cache({k: v[i : i + batch] for k, v in data.items()}, cache or {})
                for i in range(0, n, batch)
            ]
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def _chain_nodes(model: onnx.ModelProto, seeds: set[str]) -> set[str]:
    """Non-compute nodes linked to a seed compute node through non-compute nodes only."""
    producers: dict[str, onnx.NodeProto] = {}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for t in node.output:
            producers[t] = node
        for t in node.input:
            consumers.setdefault(t, []).append(node)
    by_name = {n.name: n for n in model.graph.node}
    found: set[str] = set()
    queue = deque(by_name[s] for s in seeds if s in by_name)
    while queue:
        node = queue.popleft()
        neighbours = [c for t in node.output for c in consumers.get(t, [])]
        neighbours += [producers[t] for t in node.input if t in producers]
        for nb in neighbours:
            if nb.op_type in COMPUTE_OPS or nb.name in found or nb.name in seeds:
                continue
            found.add(nb.name)
            queue.append(nb)
    return found


def _quantize_int8(src: Path, dst: Path, nodes: set[str], ctx: SurgeryContext) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    settings = ctx.profile.quantization
    # Shape inference only: graph optimisation would rename the nodes the plan refers to.
    pre = dst.with_name("pre-" + dst.name)
    quant_pre_process(str(src), str(pre), skip_optimization=True, skip_symbolic_shape=True)
    src = pre
    model = onnx.load(str(src))
    include = sorted(nodes | _chain_nodes(model, nodes))
    reduce_range = _reduce_range(ctx)
    quantize_static(
        str(src),
        str(dst),
        _Reader(ctx.calibration, cache=cache_layout(src)),  # a generation graph: prefills
        quant_format=QuantFormat.QDQ,
        nodes_to_quantize=include,
        per_channel=settings.per_channel,
        reduce_range=reduce_range,
        activation_type=getattr(QuantType, settings.activations),
        weight_type=getattr(QuantType, settings.weight_type),
        calibrate_method=getattr(CalibrationMethod, settings.calibrate_method),
        # Not CalibMaxIntermediateOutputs (a memory bound): ONNX Runtime 1.32's MinMax
        # calibrator drops the batches it collected at that count instead of merging them.
        extra_options={
            "ActivationSymmetric": settings.symmetric_activations,
            "DefaultTensorType": onnx.TensorProto.FLOAT,  # fused operators' outputs
        },
    )


def _quantize_dynamic(src: Path, dst: Path, nodes: set[str], ctx: SurgeryContext) -> None:
    """Dynamic int8 for MatMul and fused Attention ``nodes``: weights offline (per output
    column when the profile says ``per_channel``), activations per run."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(src),
        str(dst),
        nodes_to_quantize=sorted(nodes),
        op_types_to_quantize=["MatMul", "Attention"],
        per_channel=ctx.profile.quantization.per_channel,
        reduce_range=_reduce_range(ctx),
        weight_type=QuantType.QInt8,
        # fused operators (com.microsoft) have no ONNX shape inference: their outputs are float
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )


def _quantize_nbits(
    src: Path,
    dst: Path,
    nodes: set[str] | None,
    bits: int = 4,
    block_size: int = 32,
    symmetric: bool = True,
    grid: str = "symmetric",
) -> None:
    """MatMulNBits (``bits``-bit weights, blocks of ``block_size``) on ``nodes`` (None: every
    MatMul with constant weights), and on no other node; on ``grid`` ``minmax``, each block's
    own range (:func:`_quantize_minmax`), else ONNX Runtime's quantizer (round to nearest,
    ``symmetric`` or with integer zero points).

    ``nodes_to_include`` alone does not restrict the quantizer: it quantizes a node that is
    listed *or* whose type is one it quantizes (MatMul), so every MatMul went 4-bit whenever
    one layer did. The MatMuls not in ``nodes`` are excluded by name, and the result is
    counted.
    """
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    model = onnx.load(str(src))
    if grid == "minmax":
        _quantize_minmax(model, nodes, bits, block_size)
        onnx.save(model, str(dst))
        return
    before = sum(n.op_type == "MatMulNBits" for n in model.graph.node)
    wanted = set() if nodes is None else nodes
    others = [n.name for n in model.graph.node if n.op_type == "MatMul" and n.name not in wanted]
    quantizer = MatMulNBitsQuantizer(
        model,
        bits=bits,
        block_size=block_size,
        is_symmetric=symmetric,
        accuracy_level=4,
        nodes_to_include=sorted(nodes) if nodes is not None else None,
        nodes_to_exclude=others if nodes is not None else [],
    )
    quantizer.process()
    made = sum(n.op_type == "MatMulNBits" for n in quantizer.model.model.graph.node) - before
    if nodes is not None and made > len(nodes):
        raise RuntimeError(
            f"the {bits}-bit quantizer made {made} MatMulNBits for {len(nodes)} planned nodes"
        )
    quantizer.model.save_model_to_file(str(dst), use_external_data_format=False)


def _quantize_minmax(
    model: onnx.ModelProto, nodes: set[str] | None, bits: int, block_size: int
) -> int:
    """Replace ``nodes`` (None: every MatMul with a constant 2-D float weight) by MatMulNBits
    on each block's own range: the block's minimum and step as floats, ``w = step * (q -
    zero)`` with a float zero point (``-min / step``), as llama.cpp's Q4_1 grid and HQQ's
    (unoptimized) store them; returns how many. Symmetric round-to-nearest spends one of 16
    levels on a sign it does not need and centres every block on zero; the min-max grid fits
    the block. ONNX Runtime runs float zero points on a slow path, which
    ``kernels.fusion.unfold_float_zero_points`` removes."""
    from onnx import helper, numpy_helper

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    made = 0
    for i, node in enumerate(graph.node):
        if node.op_type != "MatMul" or node.domain not in ("", "ai.onnx"):
            continue
        if (nodes is not None and node.name not in nodes) or node.input[1] not in inits:
            continue
        weight = numpy_helper.to_array(inits[node.input[1]])
        if weight.ndim != 2 or weight.dtype != np.float32:
            continue
        k, n = weight.shape
        # named after the weight, as ONNX Runtime's quantizer names them (``engagement``
        # follows a weight by its name); a weight two MatMuls share is quantized once
        names = [f"{node.input[1]}_Q{bits}", f"{node.input[1]}_scales", f"{node.input[1]}_zeros"]
        if names[0] not in inits:
            q, step, low = minmax_blocks(weight, bits, block_size)
            if bits == 4:
                q = q[..., 0::2] | (q[..., 1::2] << 4)
            zeros = (-low / step).astype(np.float32)
            for array, name in zip((q, step, zeros), names, strict=True):
                inits[name] = numpy_helper.from_array(array, name)
                graph.initializer.append(inits[name])
        replacement = helper.make_node(
            "MatMulNBits", [node.input[0], *names], list(node.output),
            name=node.name, domain="com.microsoft", K=k, N=n, bits=bits,
            block_size=block_size, accuracy_level=4,
        )  # fmt: skip
        graph.node[i].CopyFrom(replacement)
        made += 1
    drop_unread_initializers(graph)
    return made


@register_kernel
class Quantization(Kernel):
    """Choose a bit-width per layer: 32 (float), 8 (static Q/DQ) or 4 (MatMulNBits)."""

    name = "quantize"
    knob = "bits"
    stage = "onnx"
    order = 30

    def units(self, model: nn.Module, ctx: SurgeryContext, space: SpaceSpec) -> list[Unit]:
        if not space.quantize.enabled or ctx.baseline_onnx is None:
            return []
        allowed = [b for b in space.quantize.bits if b in ctx.profile.bits_allowed]
        onnx_model = onnx.load(str(ctx.baseline_onnx), load_external_data=False)
        nodes = nodes_by_module(onnx_model)
        attention = _fused_attention(onnx_model)
        masked = masked_attention(onnx_model)
        units = []
        for path, layer in model.named_modules():
            if path in ctx.ignore:
                continue
            if path in attention:  # q, k and v fused into one node: one unit, int8 or float
                if 8 in allowed and not set(attention[path]) & masked:
                    units.append(Unit(path, self.knob, (32, 8), {"nodes": attention[path]}))
                continue
            if not isinstance(layer, (nn.Linear, nn.Conv1d, nn.Conv2d)):
                continue
            owned = nodes.get(path, [])
            if not owned:
                continue
            choices: list[int] = [b for b in allowed if b != 4]
            if 4 in allowed and all(has_constant_weight(onnx_model, n) for n in owned):
                choices.append(4)
            if len(choices) > 1:
                units.append(Unit(path, self.knob, tuple(choices), {"nodes": owned}))
        return _engaging(units, ctx)

    def refusals(self, model: nn.Module, ctx: SurgeryContext, space: SpaceSpec) -> list[Refusal]:
        if not space.quantize.enabled or ctx.baseline_onnx is None:
            return []
        onnx_model = onnx.load(str(ctx.baseline_onnx), load_external_data=False)
        masked = masked_attention(onnx_model)
        return [
            Refusal(path, self.knob, MASKED_ATTENTION)
            for path, nodes in _fused_attention(onnx_model).items()
            if set(nodes) & masked and path not in ctx.ignore
        ]

    def apply_onnx(
        self, src: Path, dst: Path, plan: dict[str, Any], ctx: SurgeryContext
    ) -> dict[str, Any]:
        if not plan:
            shutil.copyfile(src, dst)
            return {}
        nodes = nodes_by_module(onnx.load(str(src), load_external_data=False))
        by_bits: dict[int, set[str]] = {8: set(), 4: set()}
        for path, bits in plan.items():
            if path not in nodes:
                raise CandidateError(f"quantize: no ONNX node belongs to module '{path}'")
            by_bits[int(bits)].update(nodes[path])
        logging.getLogger("onnxruntime.quantization").setLevel(logging.ERROR)
        report: dict[str, Any] = {"int8_nodes": len(by_bits[8]), "int4_nodes": len(by_bits[4])}
        with tempfile.TemporaryDirectory() as tmp:
            planned = by_bits[8] | by_bits[4]
            src = fold_weight_transposes(src, Path(tmp) / "constant-weights.onnx", planned)
            try:
                final = _with_bias_correction(src, Path(tmp), by_bits, ctx, report)
            except CandidateError:
                raise
            except Exception as e:
                raise CandidateError(f"quantization failed: {type(e).__name__}: {e}") from e
            if shared := share_tied_embeddings(final, Path(tmp) / "tied.onnx"):
                final = Path(tmp) / "tied.onnx"
                report["tied_embedding_shared"] = shared
            engaged = engagement(src, final, by_bits, ctx)
            shutil.copyfile(final, dst)
        report.update(engaged.report())
        if engaged.float_nodes:
            raise CandidateError(
                f"quantize: the plan puts {len(engaged.float_nodes)} layer(s) in low precision "
                "that ONNX Runtime runs in float after graph optimization "
                f"({', '.join(engaged.float_nodes[:4])}): their quantized weights only pass "
                "through DequantizeLinear into a float kernel, so the candidate would be a float "
                "model with conversions, not an int8 one"
            )
        return report


def share_tied_embeddings(src: Path, dst: Path) -> int:
    """Write ``src`` to ``dst`` with each embedding whose tied head went 4- or 8-bit read from
    the head's quantized table (``GatherBlockQuantized``), as onnxruntime-genai's builder
    writes it; returns how many (0: nothing written).

    A tied head is the embedding transposed: ``fold_weight_transposes`` gives it a constant of
    its own (``<table>_transposed``) for the quantizer, and the float table stays for the
    Gather. ``MatMulNBits`` stores the head as ``[vocabulary, blocks, block bytes]``, each
    vocabulary row quantized in blocks along the hidden size: the embedding table's layout.
    So the Gather reads that table (reshaped to ``[vocabulary, hidden bytes]``) with the
    head's scales, and the float table goes: one copy of the model's largest tensor, at the
    head's bits, as in the source model (SmolLM2: 113 MB of float table). The embedding then
    takes the head's rounding, which is the plan's choice for that tensor. Only symmetric
    heads (no zero points) whose hidden size is a whole number of blocks share: a head on the
    min-max grid has float zero points, which ``GatherBlockQuantized`` does not take."""
    from onnx import helper, numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    heads = {
        n.input[1]: n
        for n in graph.node
        if n.op_type == "MatMulNBits" and n.domain == "com.microsoft" and len(n.input) <= 3
    }
    replaced: dict[int, list[onnx.NodeProto]] = {}
    nodes = list(graph.node)  # held: keyed by identity below
    for node in nodes:
        if node.op_type != "Gather" or node.domain not in ("", "ai.onnx"):
            continue
        table = inits.get(node.input[0])
        if table is None or table.data_type != onnx.TensorProto.FLOAT or len(table.dims) != 2:
            continue
        if any(a.name == "axis" and a.i != 0 for a in node.attribute):
            continue
        vocabulary, hidden = table.dims
        # the quantizer names a weight's blocks <weight>_Q<bits>; fold_weight_transposes
        # names the head's weight <table>_transposed
        head = next((heads[b] for b in (f"{table.name}_transposed_Q{bits}" for bits in (4, 8))
                     if b in heads), None)  # fmt: skip
        if head is None:
            continue
        bits, block = int_attribute(head, "bits"), int_attribute(head, "block_size")
        size = (int_attribute(head, "K"), int_attribute(head, "N"))
        if size != (hidden, vocabulary) or hidden % block:
            continue
        shape = numpy_helper.from_array(
            np.array([vocabulary, hidden * bits // 8], np.int64), f"{table.name}_quantized_shape"
        )
        graph.initializer.append(shape)
        rows = f"{table.name}_quantized_rows"
        reshape = helper.make_node("Reshape", [head.input[1], shape.name], [rows],
                                   name=f"{node.name}_quantized_rows")  # fmt: skip
        gather = helper.make_node(
            "GatherBlockQuantized", [rows, node.input[1], head.input[2]], list(node.output),
            name=node.name, domain="com.microsoft", bits=bits, block_size=block,
            gather_axis=0, quantize_axis=1,
        )  # fmt: skip
        replaced[id(node)] = [reshape, gather]
    if replaced:
        replace_nodes(model, nodes, replaced)
        onnx.save(model, str(dst))
    return len(replaced)


def masked_attention(model: onnx.ModelProto) -> set[str]:
    """The fused ``Attention`` nodes that still take an ``attention_bias`` (input 5): those
    whose bias ``fusion.mask_as_index`` could not turn into a ``mask_index``. ONNX Runtime's
    quantizer rewrites an Attention into ``QAttention``, which has no such input, and drops
    it (on all-MiniLM-L6-v2 the int8 model attended to padding and lost 5.7 points of probe
    accuracy). Such an Attention stays in float (its own fused kernel); its layer's other
    MatMuls still take int8."""
    return {
        n.name
        for n in model.graph.node
        if n.op_type == "Attention" and len(n.input) > 5 and n.input[5]
    }


MASKED_ATTENTION = (
    "int8 would drop its attention mask (ONNX Runtime's quantizer makes a QAttention, which "
    "has no attention_bias input); it runs fused in float"
)


def _fused_attention(model: onnx.ModelProto) -> dict[str, list[str]]:
    """Module path -> its fused ``Attention`` nodes (``kernels.fusion``): the innermost module
    the node's name scopes, the one whose query, key and value projections it packs."""
    out: dict[str, list[str]] = {}
    for node in model.graph.node:
        scopes = module_of_node(node.name)
        if node.op_type == "Attention" and scopes:
            out.setdefault(scopes[-1], []).append(node.name)
    return out


class Engagement(NamedTuple):
    """Which planned low-precision nodes run as integer kernels in the runtime's graph."""

    checked: dict[int, int]  # bits -> planned nodes whose weight could be followed
    engaged: dict[int, int]  # bits -> of those, the ones an integer kernel consumes
    float_nodes: list[str]  # planned nodes that run in float
    unchecked: int  # planned nodes without a constant weight to follow

    def report(self) -> dict[str, Any]:
        out: dict[str, Any] = {"engagement_unchecked": self.unchecked}
        for bits, name in ((8, "int8_engaged"), (4, "int4_engaged")):
            if self.checked.get(bits):
                out[name] = self.engaged[bits] / self.checked[bits]
        return out


def _checks_engagement(profile: HardwareProfile) -> bool:
    """Engagement is read from ONNX Runtime's CPU graph; other runtimes fuse in their own
    builders (TensorRT, torch) and are not checked."""
    return profile.runtime == "onnxruntime" and not profile.is_gpu


def engagement(
    float_src: Path, quantized: Path, by_bits: dict[int, set[str]], ctx: SurgeryContext
) -> Engagement:
    """Follow each planned node's weight into ONNX Runtime's optimized graph of ``quantized``.

    The quantizer rewrites a weight ``W`` into ``W_quantized`` (``W_Q4`` for 4-bit) with its
    scales; the runtime then fuses the Q/DQ pattern into an integer kernel (``QLinearConv``,
    ``MatMulInteger``, ...) or, where it cannot, leaves ``DequantizeLinear`` feeding the float
    kernel. A node engages when a tensor derived from its weight feeds one of ``INTEGER_OPS``.
    The graph is optimized as the measurement runs it (all optimizations, CPU execution
    provider; see ``_checks_engagement``).
    """
    planned = {bits: nodes for bits, nodes in by_bits.items() if nodes}
    if not _checks_engagement(ctx.profile) or not planned:
        return Engagement({}, {}, [], 0)
    import onnxruntime as ort

    source = onnx.load(str(float_src), load_external_data=False)
    constants = {t.name for t in source.graph.initializer}
    weight_of = {
        n.name: next((i for i in n.input[1:] if i in constants), None)
        or (n.input[0] if n.input and n.input[0] in constants else None)
        for n in source.graph.node
    }
    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        options.log_severity_level = 3
        ort.InferenceSession(str(quantized), options, providers=["CPUExecutionProvider"])
        optimized = onnx.load(options.optimized_model_filepath, load_external_data=False)
    consumers: dict[str, set[str]] = {}
    for node in optimized.graph.node:
        for name in node.input:
            consumers.setdefault(name, set()).add(node.op_type)

    def engaged(weight: str) -> bool:
        return any(
            ops & INTEGER_OPS
            for name, ops in consumers.items()
            if name == weight or name.startswith(weight + "_")
        )

    checked: dict[int, int] = {}
    count: dict[int, int] = {}
    float_nodes: list[str] = []
    unchecked = 0
    for bits, nodes in planned.items():
        for node in sorted(nodes):
            weight = weight_of.get(node)
            if weight is None:
                unchecked += 1
                continue
            checked[bits] = checked.get(bits, 0) + 1
            if engaged(weight):
                count[bits] = count.get(bits, 0) + 1
            else:
                float_nodes.append(node)
    return Engagement(checked, {b: count.get(b, 0) for b in checked}, float_nodes, unchecked)


def _engaging(units: list[Unit], ctx: SurgeryContext) -> list[Unit]:
    """``units`` without int8 where it would not engage: the baseline is quantized once with
    every int8 choice at 8 bits (static Q/DQ, as Conv and Gemm always are; MatMul dynamic where
    the profile says ``int8_format: dynamic``) and followed into the runtime's optimized graph
    (``engagement``); a layer that still runs in float there is not offered int8, so no trial
    spends its time on a plan that measures as float."""
    int8 = [u for u in units if 8 in u.choices]
    baseline = ctx.baseline_onnx
    if not int8 or baseline is None or not _checks_engagement(ctx.profile):
        return units
    nodes = {n for u in int8 for n in u.info["nodes"]}
    if ctx.profile.quantization.int8_format == "auto":  # static, the stricter format
        ctx = replace(ctx, profile=ctx.profile.with_int8_format("static"))
    logging.getLogger("onnxruntime.quantization").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            baseline = fold_weight_transposes(baseline, Path(tmp) / "constant-weights.onnx", nodes)
            quantized = _quantize(baseline, Path(tmp), {8: nodes, 4: set()}, ctx)
            floating = set(engagement(baseline, quantized, {8: nodes}, ctx).float_nodes)
        except Exception as e:  # the trials will say what fails, layer by layer
            log.warning(
                "int8 engagement probe failed (%s: %s); every int8 choice kept", type(e).__name__, e
            )
            return units
    refused = [u for u in int8 if floating & set(u.info["nodes"])]
    if refused:
        log.warning(
            "int8 not offered for %d layer(s) that ONNX Runtime would run in float even "
            "quantized: %s",
            len(refused),
            ", ".join(u.path for u in refused),
        )
    kept = []
    for u in units:
        if u in refused:
            u = replace(u, choices=tuple(c for c in u.choices if c != 8))
        if len(u.choices) > 1:
            kept.append(u)
    return kept


def _quantize(src: Path, out_dir: Path, by_bits: dict[int, set[str]], ctx: SurgeryContext) -> Path:
    """int8 for ``by_bits[8]`` (static Q/DQ, or dynamic for MatMul when the profile says
    so), then 4-bit MatMulNBits for ``by_bits[4]``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    current = src
    static, dynamic, weight_only = _int8_formats(src, by_bits[8], ctx)
    if static:
        out = out_dir / "int8.onnx"
        _quantize_int8(current, out, static, ctx)
        current = out
    if dynamic:
        out = out_dir / "int8-dynamic.onnx"
        _quantize_dynamic(current, out, dynamic, ctx)
        current = out
    if weight_only:
        out = out_dir / "int8-weights.onnx"
        _quantize_nbits(current, out, weight_only, 8, ctx.profile.quantization.int4_block_size)
        current = out
    if by_bits[4]:
        out = out_dir / "int4.onnx"
        settings = ctx.profile.quantization
        _quantize_nbits(current, out, by_bits[4], 4, settings.int4_block_size,
                        grid=settings.int4_grid)  # fmt: skip
        current = out
    return current


def _int8_formats(
    src: Path, int8: set[str], ctx: SurgeryContext
) -> tuple[set[str], set[str], set[str]]:
    """The int8 nodes of ``src`` split by how they are quantized: (static, dynamic,
    weight-only), the graph read once.

    Dynamic: MatMul, when the profile asks for dynamic, and a fused Attention always
    (``QAttention``, ONNX Runtime's one integer attention, is dynamic). Not Gemm: ONNX
    Runtime's dynamic quantizer has no integer Gemm (its registry maps MatMul to
    MatMulInteger, Conv to ConvInteger), so a "dynamic" Gemm kept its float kernel behind a
    DequantizeLinear, as ``engagement`` showed on the digits classifier. A Gemm takes static
    Q/DQ (QGemm) in either format.

    Weight-only (``int8_format: weight-only``): 8-bit MatMulNBits on the MatMuls with a
    constant weight. Everything else is static Q/DQ.
    """
    model = onnx.load(str(src), load_external_data=False)
    ops = node_op_types(model)
    fmt = ctx.profile.quantization.int8_format
    dynamic_ops = {"Attention", "MatMul"} if fmt == "dynamic" else {"Attention"}
    dynamic = {n for n in int8 if ops.get(n) in dynamic_ops}
    weight_only: set[str] = set()
    if fmt == "weight-only":
        constants = {t.name for t in model.graph.initializer}
        weight_only = {
            n.name
            for n in model.graph.node
            if n.name in int8 and n.op_type == "MatMul" and n.input[1] in constants
        }
    return int8 - dynamic - weight_only, dynamic, weight_only


def _with_bias_correction(
    src: Path, tmp: Path, by_bits: dict[int, set[str]], ctx: SurgeryContext, report: dict
) -> Path:
    """Quantize ``src``, with bias correction where the recovery settings ask for it.

    ``bias_correction: true`` corrects every quantized layer. ``"auto"`` corrects only coarse
    weight quantization (int8 with one scale per tensor, 4-bit blocks) and keeps the result
    only if it lowers the mean squared error of the outputs against the float candidate on
    the calibration data; ``report["bias_correction"]`` says what happened.
    """
    mode = ctx.recovery.bias_correction
    settings = ctx.profile.quantization
    targets8 = by_bits[8] if mode is True or not settings.per_channel else set()
    targets8 = targets8 & _int8_formats(src, by_bits[8], ctx)[0]  # static only: emulated
    fixed_src = tmp / "bias-corrected.onnx"
    n = 0
    if mode is not False and (targets8 or by_bits[4]):
        weights = WeightQuant(
            settings.weight_type, settings.per_channel, _reduce_range(ctx),
            settings.int4_block_size, settings.int4_grid,
        )  # fmt: skip
        n = correct_bias(src, fixed_src, targets8, by_bits[4], ctx.calibration, weights)
    if n == 0:
        return _quantize(src, tmp / "plain", by_bits, ctx)
    fixed = _quantize(fixed_src, tmp / "fixed", by_bits, ctx)
    if mode is True:
        report["bias_correction"] = {"layers": n, "kept": True}
        return fixed
    plain = _quantize(src, tmp / "plain", by_bits, ctx)
    calibration = {k: v[:MAX_SAMPLES] for k, v in ctx.calibration.items()}
    reference = predict(src, calibration)
    errors = [float(np.mean((predict(p, calibration) - reference) ** 2)) for p in (plain, fixed)]
    kept = errors[1] < errors[0]
    report["bias_correction"] = {
        "layers": n,
        "kept": kept,
        "mse_plain": errors[0],
        "mse_corrected": errors[1],
    }
    return fixed if kept else plain


def _reduce_range(ctx: SurgeryContext) -> bool:
    setting = ctx.profile.quantization.reduce_range
    return (not cpu_has_vnni()) if setting == "auto" else bool(setting)
