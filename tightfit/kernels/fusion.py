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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from tightfit.hardware_profiles import HardwareProfile

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


def fuses(profile: HardwareProfile) -> bool:
    """Whether ``profile`` fuses its graphs: ``graph_fusion: auto`` on ONNX Runtime's CPU
    provider, one forward pass (a generation graph's cache inputs are left as the exporter
    wrote them). Not yet on ONNX Runtime's CUDA provider: fp16 on fused graphs has not run on
    a GPU here, and a baseline that fails there would stop the search."""
    return (
        profile.graph_fusion == "auto"
        and profile.runtime == "onnxruntime"
        and profile.execution_provider == "CPUExecutionProvider"
        and profile.generation is None
    )


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
    counts, refused = _fuse_checked(path, fused, inputs)
    if refused or not counts:
        fused.unlink(missing_ok=True)
        return Fused(refused=refused)
    fused.replace(path)
    return Fused(counts)


def _fuse_checked(
    path: Path, fused: Path, inputs: dict[str, np.ndarray] | None
) -> tuple[dict[str, int], str | None]:
    """Fuse ``path`` into ``fused``, its fused nodes named by scope, checked on ``inputs``."""
    from tightfit._ort import predict
    from tightfit.kernels.export import scope_names

    try:
        model, counts = _fuse_with_onnxscript(path)
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
