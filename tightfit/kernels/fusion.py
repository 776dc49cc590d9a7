"""Graph fusion: the transformer fusions a deployment on ONNX Runtime runs (design decision 12).

ONNX Runtime's own session optimizations fuse little of a transformer: its Attention,
SkipLayerNormalization and BiasGelu kernels come from an offline pass. The standard recipe
(``kernels.recipe``) runs that pass on the baseline; with ``graph_fusion: auto`` (a profile
setting) the baseline and every candidate of a search are fused the same way before precision
is applied, so that tightfit's candidates are the graphs a user would deploy, and int8 acts on
the fused operators (an Attention node quantizes as ``QAttention``).

The per-layer plan still reaches its nodes after fusion: onnxscript's rewriter keeps the
replaced nodes' ``pkg.torch.onnx.name_scopes`` metadata on the fused node, and the fused nodes
are renamed from it (``export.scope_names``). A fused ``Attention`` node belongs to the module
that held the query, key and value projections (``...attention.self`` in a BERT): the three
Linear layers become one quantization unit there, with the packed weight.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from tightfit._ort import MASK, shares_cache_buffer
from tightfit.hardware_profiles import HardwareProfile
from tightfit.kernels.export import (  # noqa: F401
    drop_unread_initializers,
    fuses,
    int_attribute,
    packs,
    replace_nodes,
)

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
    if from_dynamo(src):
        model, counts = _fuse_with_onnxscript(src)
        if model is not None:
            onnx.save(model, str(dst))
        return counts
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


def from_dynamo(path: Path) -> bool:
    """Whether the dynamo exporter wrote ``path`` (its nodes carry their module scopes)."""
    from tightfit.kernels.export import NAME_SCOPES

    graph = onnx.load(str(path), load_external_data=False).graph
    return any(p.key == NAME_SCOPES for n in graph.node for p in n.metadata_props)


def _fuse_with_onnxscript(src: Path) -> tuple[onnx.ModelProto | None, dict[str, int]]:
    """``src`` fused by onnxscript's ORT fusions, its padding mask as ``mask_index``
    (:func:`mask_as_index`), and the fused operators' counts; None where nothing fused."""
    import onnx_ir as ir
    from onnxscript.rewriter.ort_fusions import optimize_for_ort

    from tightfit.kernels.export import drop_initializer_shapes

    model = ir.load(str(src))
    optimize_for_ort(model)  # in place: Attention, SkipLayerNormalization, BiasGelu, ...
    counts: dict[str, int] = {}
    for node in model.graph:
        if node.op_type in FUSED_OPS:
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
        sizes = node.attributes.get("qkv_hidden_sizes") if node.op_type == "Attention" else None
        if sizes is not None and len(set(sizes.as_ints())) == 1:
            # equal q, k and v widths are the operator's default split; ONNX Runtime's
            # quantizer leaves an Attention that names them in float (no QAttention for it)
            del node.attributes["qkv_hidden_sizes"]
    if not counts:
        return None, {}
    proto = ir.to_proto(model)
    mask_as_index(proto)
    drop_initializer_shapes(proto)  # onnx_ir writes one for every initializer
    return proto, counts


def fused_graph(
    baseline: Path, out_dir: Path, attention: tuple[int, int] | None = None
) -> tuple[Path, dict[str, int]]:
    """The graph the recipe's CPU variants start from, and the fused operators' counts: the
    transformer optimizer's output where it fused anything, else ``baseline`` itself.

    A tied head's weight (the embedding, transposed) is made a constant of its own first
    (``fold_weight_transposes``): the optimizer turns MatMul-of-Transpose into FusedMatMul,
    which no quantizer takes, so the recipe's int4 and int8 would leave the head in float
    (onnxruntime-genai's builder quantizes it). The float variant then holds the head twice,
    as ONNX Runtime's own constant folding would in memory.
    """
    from tightfit.kernels.export import fold_weight_transposes

    out_dir.mkdir(parents=True, exist_ok=True)
    baseline = fold_weight_transposes(baseline, out_dir / "constant-weights.onnx")
    fused_path = out_dir / "fused.onnx"
    fusions = fuse_transformer(baseline, fused_path, attention)
    return (fused_path if fusions else baseline), fusions


#: the operators of tightfit's decoder graph: :func:`fuse_decoder` writes the norms and rotary
#: embeddings; GroupQueryAttention is written at export (``kernels.export.attention_for``)
DECODER_OPS = (
    "GroupQueryAttention",
    "SimplifiedLayerNormalization",
    "SkipSimplifiedLayerNormalization",
    "RotaryEmbedding",
)


def fuse_decoder(src: Path) -> tuple[onnx.ModelProto | None, dict[str, int]]:
    """A KV-cache decoder graph with its RMS norms (with the residual Add before them) and its
    rotary embeddings fused by onnxscript's rewriter; None where nothing fused.

    Not onnxscript's whole ``optimize_for_ort``: on SmolLM2's KV-cache graph it also rewrites
    attention into ``MultiHeadAttention`` beside the cache's Concat and Expand, and that made
    decoding slower (fp32 42.1 against 36.9 ms/token, int4 23.8 against 18.8, 2-core Xeon;
    ``benchmarks/results/llm_fusion.md``). The norm and rotary fusions took the graph from
    1903 to 1117 nodes. The MatMuls are left as they were, names included, so a per-layer
    plan still finds them."""
    import onnx_ir as ir
    import onnx_ir.passes.common as common_passes
    from onnxscript.optimizer import optimize
    from onnxscript.rewriter.ort_fusions.rms_normalization import fuse_rms_normalization
    from onnxscript.rewriter.ort_fusions.rotary_embedding import fuse_rotary_embedding
    from onnxscript.rewriter.ort_fusions.skip_normalization import fuse_skip_rms_normalization

    from tightfit.kernels.export import drop_initializer_shapes

    model = ir.load(str(src))
    common_passes.ShapeInferencePass()(model)
    optimize(model)
    fuse_rms_normalization(model)
    fuse_skip_rms_normalization(model)
    fuse_rotary_embedding(model)
    common_passes.CommonSubexpressionEliminationPass()(model)
    common_passes.RemoveUnusedNodesPass()(model)
    counts: dict[str, int] = {}
    for node in model.graph:
        if node.op_type in DECODER_OPS:
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    if not counts:
        return None, {}
    proto = ir.to_proto(model)
    drop_initializer_shapes(proto)
    return proto, counts


#: MatMulNBits attributes that siblings must share to be packed into one node
_NBITS_SHARED = ("K", "bits", "block_size", "accuracy_level")


def finish_decoder(src: Path, dst: Path) -> dict[str, Any]:
    """Write ``src``, a generation graph after precision, to ``dst`` as it is measured and
    exported, and return what was done: sibling MatMuls packed (``packed_matmuls``,
    :func:`pack_siblings`) and the cache buffer (``cache_buffer``: ``shared`` where the
    attention operators take their lengths from an ``attention_mask``, so one buffer serves as
    past and present, :func:`lengths_from_mask`; else ``copied``)."""
    model = onnx.load(str(src))
    packed = _pack(model)
    shared = lengths_from_mask(model) or shares_cache_buffer(model.graph)
    onnx.save(model, str(dst))
    return {"packed_matmuls": packed, "cache_buffer": "shared" if shared else "copied"}


def lengths_from_mask(model: onnx.ModelProto) -> bool:
    """Have every ``GroupQueryAttention`` of a generation graph take its sequence lengths
    (``seqlens_k``, ``total_sequence_length``) from a new input, :data:`~tightfit._ort.MASK`
    (ones over every position, ``(batch, past + new)``), as onnxruntime-genai's builder writes
    them, instead of from the shape of the past cache; True where done.

    With the lengths from the cache's shape, the past fed must be exactly as long as what was
    cached, so each step the operator copies the whole past into a new present. With them from
    the mask, past and present can be one buffer as long as the whole generation, which the
    operator only appends to (:func:`~tightfit._ort.shares_cache_buffer`; the generation
    runner binds it so). Only where nothing but the operators would read the cache then (a
    rotary embedding outside the operator reads the past's length for its positions)."""
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    attention = [n for n in graph.node if n.op_type == "GroupQueryAttention"]
    names = {i.name for i in graph.input}
    if not attention or MASK in names or "input_ids" not in names:
        return False
    if any(len(n.input) < 7 for n in attention):
        return False
    if not shares_cache_buffer(graph, lengths_from_mask=False):
        return False
    ids = next(i for i in graph.input if i.name == "input_ids").type.tensor_type.shape.dim
    batch = ids[0].dim_param or ids[0].dim_value or "batch"
    graph.input.append(
        helper.make_tensor_value_info(MASK, TensorProto.INT64, [batch, "total_sequence_length"])
    )
    prefix = f"/{MASK}"
    graph.initializer.extend([
        numpy_helper.from_array(np.array([1], dtype=np.int64), f"{prefix}/axes"),
        numpy_helper.from_array(np.array(1, dtype=np.int64), f"{prefix}/one"),
    ])  # fmt: skip
    seqlens, total = f"{prefix}/seqlens_k", f"{prefix}/total_sequence_length"
    nodes = [  # as the builder computes them: each row's length less one, and the mask's width
        helper.make_node("ReduceSum", [MASK, f"{prefix}/axes"], [f"{prefix}/lengths"],
                         name=f"{prefix}/ReduceSum", keepdims=0),
        helper.make_node("Sub", [f"{prefix}/lengths", f"{prefix}/one"], [f"{prefix}/last"],
                         name=f"{prefix}/Sub"),
        helper.make_node("Cast", [f"{prefix}/last"], [seqlens], name=f"{prefix}/Cast",
                         to=TensorProto.INT32),
        helper.make_node("Shape", [MASK], [f"{prefix}/shape"], name=f"{prefix}/Shape"),
        helper.make_node("Gather", [f"{prefix}/shape", f"{prefix}/one"], [f"{prefix}/width"],
                         name=f"{prefix}/Gather", axis=0),
        helper.make_node("Cast", [f"{prefix}/width"], [total], name=f"{prefix}/Cast_1",
                         to=TensorProto.INT32),
    ]  # fmt: skip
    for node in attention:
        node.input[5], node.input[6] = seqlens, total
    for i, node in enumerate(nodes):
        graph.node.insert(i, node)
    _remove_unread(model)
    return True


def pack_siblings(src: Path, dst: Path) -> int:
    """Write ``src`` to ``dst`` with each set of MatMuls that read the same input with constant
    weights (a decoder block's q, k and v projections; its gate and up) packed into one MatMul
    and a Split, as onnxruntime-genai's builder packs them; returns how many packed nodes were
    made.

    Packed after precision is applied, so a per-layer plan acts on each projection alone:
    float MatMuls pack with float ones, ``MatMulNBits`` with those of the same bits, block
    size and accuracy level (and zero points for all or none). On SmolLM2 with every
    projection 4-bit, packing took decoding from 18.8 to 16.5 ms/token, 15.6 with the norms
    and rotary fused (``benchmarks/results/llm_fusion.md``): two threads share one larger
    product better than three small ones. The outputs are the same tensors, unchanged.
    """
    model = onnx.load(str(src))
    packed = _pack(model)
    onnx.save(model, str(dst))
    return packed


def _pack(model: onnx.ModelProto) -> int:
    """:func:`pack_siblings` on ``model``, in place."""
    from onnx import helper, numpy_helper

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    groups: dict[tuple, list[onnx.NodeProto]] = {}
    nodes_held = list(graph.node)  # held: the identities below are of these objects
    for node in nodes_held:
        key = _pack_key(node, inits)
        if key is not None:
            groups.setdefault(key, []).append(node)
    # by identity: names need not be unique (or set) in an ONNX graph
    replace: dict[int, list[onnx.NodeProto]] = {}
    drop: set[int] = set()
    for nodes in groups.values():
        if len(nodes) < 2:
            continue
        name = f"{nodes[0].name}_packed"
        arrays = [[numpy_helper.to_array(inits[n.input[i]]) for n in nodes] for i in (1, 2, 3)
                  if len(nodes[0].input) > i and nodes[0].input[i]]  # fmt: skip
        if nodes[0].op_type == "MatMul":
            [weights] = arrays
            packed = [np.concatenate(weights, axis=1)]
            widths = [w.shape[1] for w in weights]
            attrs: dict = {}
        else:  # MatMulNBits: weights [N, blocks, blob], scales and zero points N first
            packed = [np.concatenate(a, axis=0) for a in arrays]
            widths = [int_attribute(n, "N") for n in nodes]
            attrs = {a.name: helper.get_attribute_value(a) for a in nodes[0].attribute}
            attrs["N"] = sum(widths)
        inputs = [nodes[0].input[0]]
        for i, array in enumerate(packed):
            tensor = numpy_helper.from_array(array, f"{name}_{i + 1}")
            graph.initializer.append(tensor)
            inputs.append(tensor.name)
        sizes = numpy_helper.from_array(np.array(widths, dtype=np.int64), f"{name}_sizes")
        graph.initializer.append(sizes)
        domain = nodes[0].domain
        product = helper.make_node(nodes[0].op_type, inputs, [f"{name}_out"], name=name,
                                   domain=domain, **attrs)  # fmt: skip
        split = helper.make_node("Split", [product.output[0], sizes.name],
                                 [n.output[0] for n in nodes], name=f"{name}_split", axis=-1)  # fmt: skip
        replace[id(nodes[0])] = [product, split]
        drop.update(id(n) for n in nodes)
    replace_nodes(model, nodes_held, {i: replace.get(i, []) for i in drop})
    _feed_packed_attention(model)
    return len(replace)


def _feed_packed_attention(model: onnx.ModelProto) -> int:
    """Give each ``GroupQueryAttention`` whose query, key and value are the three parts of one
    packed product (a Split into ``heads``, ``kv heads`` and ``kv heads`` times the head size,
    each part reshaped to heads and back) the packed product itself, as its ``query`` with no
    ``key`` or ``value``, as onnxruntime-genai's builder feeds it; returns how many. The
    reshapes to heads and back keep each part as it was (the operator takes the part's own
    shape, ``(batch, tokens, heads x head size)``), so the Split and the six Reshapes go; so
    does the model's reshape of the operator's output (:func:`_skip_output_reshapes`)."""
    from onnx import numpy_helper

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    producer = {out: n for n in graph.node for out in n.output}
    readers: dict[str, int] = {}
    for n in graph.node:
        for t in n.input:
            readers[t] = readers.get(t, 0) + 1

    def through_reshapes(name: str) -> str | None:
        """The tensor two single-use Reshapes above ``name``, or None."""
        for _ in range(2):
            node = producer.get(name)
            if node is None or node.op_type != "Reshape" or readers.get(node.output[0]) != 1:
                return None
            name = node.input[0]
        return name

    fed = 0
    for node in graph.node:
        if node.op_type != "GroupQueryAttention" or len(node.input) < 3 or not node.input[2]:
            continue
        parts = [through_reshapes(t) for t in node.input[:3]]
        split = producer.get(parts[0]) if parts[0] else None
        if split is None or split.op_type != "Split" or list(split.output) != parts:
            continue
        if len(split.input) < 2 or split.input[1] not in inits:
            continue
        attrs = {a.name: a.i for a in node.attribute if a.type == a.INT}
        axis = next((a.i for a in split.attribute if a.name == "axis"), 0)
        sizes = numpy_helper.to_array(inits[split.input[1]]).tolist()
        heads, kv_heads = attrs.get("num_heads", 0), attrs.get("kv_num_heads", 0)
        if axis != -1 or len(sizes) != 3 or not heads or not kv_heads or sizes[1] != sizes[2]:
            continue
        if sizes[0] * kv_heads != sizes[1] * heads or sizes[0] % heads:
            continue
        node.input[0] = split.input[0]
        node.input[1] = ""
        node.input[2] = ""
        fed += 1
    if fed:
        _skip_output_reshapes(model)
        _remove_unread(model)
    return fed


def _skip_output_reshapes(model: onnx.ModelProto) -> None:
    """Let the readers of each attention's output reshape read the attention's output itself.

    The operator writes ``(batch, tokens, heads x head size)``, and the model reshapes its
    attention output to ``(*input_shape, -1)`` with ``input_shape`` the hidden states' batch
    and tokens (transformers' attention modules): the same shape. Only a Reshape to three
    dimensions, the last -1 (a Concat of three, the last the constant -1), is skipped."""
    from onnx import numpy_helper

    graph = model.graph
    producer = {out: n for n in graph.node for out in n.output}
    outputs = {o.name for o in graph.output}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for n in graph.node:
        for t in n.input:
            readers.setdefault(t, []).append(n)
    inits = {i.name: i for i in graph.initializer}

    def constant(name: str) -> list[int] | None:
        if name in inits:
            return numpy_helper.to_array(inits[name]).tolist()
        node = producer.get(name)
        if node is not None and node.op_type == "Constant":
            return numpy_helper.to_array(node.attribute[0].t).tolist()
        return None

    for node in list(graph.node):
        if node.op_type != "GroupQueryAttention":
            continue
        after = readers.get(node.output[0], [])
        if len(after) != 1 or after[0].op_type != "Reshape" or after[0].output[0] in outputs:
            continue
        reshape = after[0]
        shape = producer.get(reshape.input[1])
        if shape is None or shape.op_type != "Concat" or len(shape.input) != 3:
            continue
        if constant(shape.input[2]) not in ([-1], -1):
            continue
        for reader in readers.get(reshape.output[0], []):
            for i, t in enumerate(reader.input):
                if t == reshape.output[0]:
                    reader.input[i] = node.output[0]


def _remove_unread(model: onnx.ModelProto) -> None:
    """Drop the nodes (and then the initializers) whose outputs nothing reads, repeatedly."""
    graph = model.graph
    outputs = {o.name for o in graph.output}
    while True:
        read = {t for n in graph.node for t in n.input} | outputs
        kept = [n for n in graph.node if any(o in read for o in n.output)]
        if len(kept) == len(graph.node):
            break
        del graph.node[:]
        graph.node.extend(kept)
    drop_unread_initializers(graph)


def _pack_key(node: onnx.NodeProto, inits: dict[str, onnx.TensorProto]) -> tuple | None:
    """What ``node`` must share with a sibling to be packed with it; None where it cannot be
    packed (no constant 2-D weight, a bias or group index on a MatMulNBits, zero points not
    laid out one row per output)."""
    if node.op_type == "MatMul" and node.domain in ("", "ai.onnx"):
        weight = inits.get(node.input[1])
        if weight is None or len(weight.dims) != 2:
            return None
        return ("MatMul", node.input[0], weight.data_type, weight.dims[0])
    if node.op_type != "MatMulNBits" or node.domain != "com.microsoft":
        return None
    inputs = list(node.input)
    if len(inputs) > 4 and any(inputs[4:]):  # g_idx, bias
        return None
    if not all(t in inits for t in inputs[1:] if t):
        return None
    n = int_attribute(node, "N")
    zero_points = inits.get(inputs[3]) if len(inputs) > 3 and inputs[3] else None
    if zero_points is not None and (len(zero_points.dims) != 2 or zero_points.dims[0] != n):
        return None
    scales = inits[inputs[2]]
    if scales.dims[0] % n:  # [N * blocks] or [N, blocks]: N first either way
        return None
    shared = tuple(int_attribute(node, a) if any(x.name == a for x in node.attribute) else None
                   for a in _NBITS_SHARED)  # fmt: skip
    zero_type = zero_points.data_type if zero_points is not None else None
    return ("MatMulNBits", inputs[0], shared, zero_type, scales.data_type)


def unfold_float_zero_points(src: Path, dst: Path, offset_bits: int = 8) -> int:
    """Write ``src`` to ``dst`` with each MatMulNBits whose zero points are floats computed as
    ONNX Runtime's fast kernel plus a small correction product; returns how many were rewritten.

    ONNX Runtime's CPU kernel takes integer zero points only: with float ones (the min-max grid
    of ``kernels.quantization``, HQQ's) it ran SmolLM2 at 0.21x the fp32 export where the
    symmetric grid ran at 1.97x (``benchmarks/results/llm_int4_formats.md``). A block's weights
    are ``s * (q - z)``, which is ``s * (q - 2^(bits-1))`` (the default zero point, the fast
    path) plus ``s * (2^(bits-1) - z)``, one number per block and output column, ``M``.
    So ``x @ W = MatMulNBits(x) + (x @ E) @ M``, where ``x @ E`` sums ``x`` over each block
    (``E``: ones on a block's rows, one constant per shape) and is shared by the products that
    read ``x``: two products of size ``K x blocks`` and ``blocks x N`` beside the ``K x N`` one.

    Decoding reads every weight once per token, so these constants' bytes are its cost: ``M``
    in float is a quarter of a 4-bit weight's bytes again. ``offset_bits`` 8 stores ``M`` as
    8-bit blocks of 16 (a MatMulNBits of its own, symmetric, rounding each offset by at most
    1/254 of its block's largest); 32 keeps it exact.
    """
    from onnx import helper, numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    ones: dict[tuple[int, int], str] = {}  # (K, block) -> E
    sums: dict[tuple[str, int, int], str] = {}  # (input, K, block) -> its block sums
    rewritten: dict[int, list[onnx.NodeProto]] = {}
    nodes = list(graph.node)  # held: the identities below are of these objects
    for node in nodes:
        if node.op_type != "MatMulNBits" or node.domain != "com.microsoft":
            continue
        inputs = list(node.input)
        zero = inits.get(inputs[3]) if len(inputs) > 3 and inputs[3] else None
        if zero is None or zero.data_type != onnx.TensorProto.FLOAT or inputs[2] not in inits:
            continue
        if len(inputs) > 4 and inputs[4]:  # g_idx reorders the blocks
            continue
        k, n, bits, block = (int_attribute(node, a) for a in ("K", "N", "bits", "block_size"))
        blocks = -(-k // block)
        scales = numpy_helper.to_array(inits[inputs[2]]).reshape(n, blocks)
        zeros = numpy_helper.to_array(zero).reshape(n, blocks)
        offsets = (scales * ((1 << (bits - 1)) - zeros)).T.astype(np.float32)  # [blocks, N]
        name = node.name or node.output[0]
        added: list[onnx.NodeProto] = []
        if (k, block) not in ones:
            e = np.zeros((k, blocks), np.float32)
            e[np.arange(k), np.arange(k) // block] = 1.0
            ones[(k, block)] = f"block_ones_{k}_{block}"
            graph.initializer.append(numpy_helper.from_array(e, ones[(k, block)]))
        key = (inputs[0], k, block)
        if key not in sums:
            sums[key] = f"{name}_block_sums"
            added.append(helper.make_node("MatMul", [inputs[0], ones[(k, block)]], [sums[key]],
                                          name=f"{name}_block_sums"))  # fmt: skip
        fast = helper.make_node(
            "MatMulNBits", [*inputs[:3], *(["", "", inputs[5]] if len(inputs) > 5 else [])],
            [f"{name}_fast"], name=f"{name}_fast", domain="com.microsoft",
            **{a.name: helper.get_attribute_value(a) for a in node.attribute},
        )  # fmt: skip
        if offset_bits == 8:
            codes, steps = _symmetric_int8_blocks(offsets, OFFSET_BLOCK)
            names = [f"{name}_block_offsets_Q8", f"{name}_block_offsets_scales"]
            for array, tensor_name in zip((codes, steps), names, strict=True):
                graph.initializer.append(numpy_helper.from_array(array, tensor_name))
            offset = helper.make_node(
                "MatMulNBits", [sums[key], *names], [f"{name}_offsets"], name=f"{name}_offsets",
                domain="com.microsoft", K=blocks, N=n, bits=8, block_size=OFFSET_BLOCK,
                accuracy_level=int_attribute(node, "accuracy_level", 0),
            )  # fmt: skip
        else:
            tensor = numpy_helper.from_array(offsets, f"{name}_block_offsets")
            graph.initializer.append(tensor)
            offset = helper.make_node("MatMul", [sums[key], tensor.name], [f"{name}_offsets"],
                                      name=f"{name}_offsets")  # fmt: skip
        total = helper.make_node("Add", [fast.output[0], offset.output[0]], list(node.output),
                                 name=f"{name}_add")  # fmt: skip
        rewritten[id(node)] = [*added, fast, offset, total]
    replace_nodes(model, nodes, rewritten)
    onnx.save(model, str(dst))
    return len(rewritten)


#: the block of the 8-bit offsets (MatMulNBits' smallest): their K is a product's block count
OFFSET_BLOCK = 16


def _symmetric_int8_blocks(weight: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray]:
    """A ``[K, N]`` weight as MatMulNBits' 8-bit symmetric blocks along K: the codes ``[N,
    blocks, block]`` (zero point 128, the default) and each block's step ``[N, blocks]``."""
    k, n = weight.shape
    blocks = -(-k // block)
    padded = np.zeros((blocks * block, n), np.float32)
    padded[:k] = weight
    w = padded.T.reshape(n, blocks, block)
    step = np.abs(w).max(axis=-1) / 127.0
    step[step == 0] = 1.0
    codes = np.clip(np.rint(w / step[..., None]), -128, 127) + 128
    return codes.astype(np.uint8), step.astype(np.float32)


@dataclass(frozen=True)
class Fused:
    """What :func:`fuse_for` did: the fused operators' counts ({} when nothing was fused), or
    why the fused graph was not kept (``refused``; the graph stays as exported)."""

    counts: dict[str, int] = field(default_factory=dict)
    refused: str | None = None


#: a fused graph must agree with the export: max |fused - export| / max |export| on real inputs
TOLERANCE = 1e-3


def fuse_for(
    profile: HardwareProfile, path: Path, inputs: dict[str, np.ndarray] | None = None
) -> Fused:
    """Fuse the graph at ``path`` in place when ``profile`` asks for it (:func:`fuses`) and the
    dynamo exporter wrote it.

    Only dynamo graphs: their fused nodes keep the module scopes that the per-layer plan needs,
    and onnxscript reads each layer's head count from the graph, so a candidate whose layers
    lost different numbers of heads fuses too. ONNX Runtime's optimizer (TorchScript graphs)
    would need one head count for the whole model.

    With ``inputs`` (a few real samples by input name), the fused graph is run beside the
    export and kept only if it runs and agrees (:data:`TOLERANCE`): a rewrite that does not fit
    a candidate (onnxscript's fusions on a factorized GPT-2 wrote a graph ONNX Runtime
    rejects) leaves that candidate as exported, and ``refused`` says why.
    """
    if not fuses(profile) or not from_dynamo(path):
        return Fused()
    fused = path.with_name(path.stem + "-fused.onnx")
    fuse = fuse_decoder if profile.generation is not None else _fuse_with_onnxscript
    counts, refused = _fuse_checked(path, fused, inputs, fuse)
    if refused or not counts:
        fused.unlink(missing_ok=True)
        return Fused(refused=refused)
    fused.replace(path)
    return Fused(counts)


def _fuse_checked(
    path: Path,
    fused: Path,
    inputs: dict[str, np.ndarray] | None,
    fuse: Callable[[Path], tuple[onnx.ModelProto | None, dict[str, int]]],
) -> tuple[dict[str, int], str | None]:
    """Fuse ``path`` into ``fused``, its fused nodes named by scope, checked on ``inputs``."""
    from tightfit._ort import predict
    from tightfit.kernels.export import scope_names

    try:
        model, counts = fuse(path)
        if model is None:
            return {}, None
        scope_names(model, unnamed_only=True)
        onnx.save(model, str(fused))
        if inputs is None:
            return counts, None
        reference = predict(path, inputs)
        error = float(np.abs(predict(fused, inputs) - reference).max())
        scale = float(np.abs(reference).max()) or 1.0
        if not error <= TOLERANCE * scale:  # NaN fails too
            return counts, f"the fused graph's outputs differ by {error / scale:.2g} (relative)"
    except Exception as e:  # the export stands without it
        message = str(e).splitlines()[0][:200] if str(e) else ""
        return {}, f"{type(e).__name__}: {message}"
    return counts, None


def mask_as_index(model: onnx.ModelProto) -> int:
    """Give each fused ``Attention`` that takes its padding mask as ``attention_bias`` (input 5,
    as onnxscript writes it) the raw 2-D mask as ``mask_index`` (input 3) instead; returns how
    many were changed.

    ONNX Runtime's quantizer rewrites an Attention into ``QAttention``, which has a
    ``mask_index`` input but no ``attention_bias``: it dropped the mask, and the int8
    all-MiniLM-L6-v2 attended to padding (5.7 points of probe accuracy lost). ONNX Runtime's own
    transformer optimizer writes the mask this way. Only where the bias is computed from one
    2-D integer graph input (the attention mask; inputs read only for their shapes do not
    count); the fused graph is then checked against the export on real inputs, as every fused
    graph is (:func:`fuse_for`), so a bias that meant more than padding is caught there.
    """
    graph = model.graph
    producer = {t: n for n in graph.node for t in n.output}
    graph_inputs = {i.name: i for i in graph.input}

    def sources(tensor: str) -> set[str]:
        found: set[str] = set()
        seen: set[str] = set()
        stack = [tensor]
        while stack:
            name = stack.pop()
            if name in seen or not name:
                continue
            seen.add(name)
            if name in graph_inputs:
                found.add(name)
            node = producer.get(name)
            if node is not None and node.op_type != "Shape":  # a shape carries no values
                stack.extend(node.input)
        return found

    integer = {onnx.TensorProto.INT64, onnx.TensorProto.INT32, onnx.TensorProto.BOOL}
    casts: dict[str, str] = {}
    changed = 0
    for node in list(graph.node):
        inputs = list(node.input)
        if node.op_type != "Attention" or len(inputs) < 6 or not inputs[5] or inputs[3]:
            continue
        found = sources(inputs[5])
        if len(found) != 1:
            continue
        [source] = found
        kind = graph_inputs[source].type.tensor_type
        if kind.elem_type not in integer or len(kind.shape.dim) != 2:
            continue
        if source not in casts:
            casts[source] = f"{source}_mask_index"
            cast = onnx.helper.make_node(
                "Cast", [source], [casts[source]], name=f"/{source}/Cast_mask_index",
                to=onnx.TensorProto.INT32,
            )  # fmt: skip
            graph.node.insert(0, cast)
        inputs[3] = casts[source]
        inputs = inputs[:5]
        while inputs and not inputs[-1]:
            inputs.pop()
        del node.input[:]
        node.input.extend(inputs)
        changed += 1
    return changed
