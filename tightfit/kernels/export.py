"""Export to ONNX, and the map from torch module paths to the ONNX nodes they became.

Two exporters, one naming: the supported ``torch.onnx.export(dynamo=True)`` (the default), whose
nodes are renamed from their module-path metadata, and the deprecated TorchScript exporter
(``dynamo=False``, a profile's choice and the recorded fallback), which names nodes by module
scope. Either way a node is called ``/features/features.3/Conv``: the handle per-layer
quantization needs.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np
import onnx
import torch
from torch import nn

from tightfit._ort import cache_layout, with_empty_cache
from tightfit.exceptions import CandidateError
from tightfit.hardware_profiles import DEFAULT_OPSET
from tightfit.kernels._hooks import run_watched
from tightfit.task import _attention, is_token_input
from tightfit.workdir import atomic_write

if TYPE_CHECKING:
    from tightfit.hardware_profiles import HardwareProfile

#: the operators a layer's compute lives in (a fused Attention holds a layer's q, k and v)
COMPUTE_OPS = ("Conv", "Gemm", "MatMul", "Attention")


@contextlib.contextmanager
def _fd_to(target: IO[bytes], fd: int) -> Iterator[None]:
    """Send what native code writes to file descriptor ``fd`` into ``target`` for a while."""
    sys.stdout.flush()
    saved = os.dup(fd)
    try:
        os.dup2(target.fileno(), fd)
        yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)


def dynamic_axes(
    example_inputs: tuple[torch.Tensor, ...], input_names: list[str]
) -> dict[str, dict[int, str]]:
    """The batch axis of every input and of the output; and the sequence axis of token inputs
    (``tightfit.task.is_token_input``: ids, masks), so that one file serves any length: the
    hardware profile names the length latency is measured at, the data the one it is scored at."""
    axes: dict[str, dict[int, str]] = {}
    for name, tensor in zip(input_names, example_inputs, strict=True):
        axes[name] = {0: "batch"}
        if is_token_input(tuple(tensor.shape[1:]), tensor.dtype):
            axes[name][1] = "sequence"
    axes["output"] = {0: "batch"}
    return axes


@contextlib.contextmanager
def fusable_attention(model: nn.Module) -> Iterator[None]:
    """Hugging Face models export their attention eagerly while this is entered.

    Their default, PyTorch's scaled_dot_product_attention, traces into a graph that ONNX
    Runtime's transformer optimizer does not recognise: on all-MiniLM-L6-v2 it fused no
    Attention node. Eager attention (MatMul, Softmax, MatMul) is the pattern it fuses into
    ``Attention``, as a deployment exports it. It computes the same function.
    """
    configs = {
        id(c): c
        for m in model.modules()
        if (c := getattr(m, "config", None)) is not None
        and getattr(c, "_attn_implementation", "eager") not in (None, "eager")
    }
    saved = {key: c._attn_implementation for key, c in configs.items()}
    try:
        for c in configs.values():
            c._attn_implementation = "eager"
        yield
    finally:
        for key, c in configs.items():
            c._attn_implementation = saved[key]


@contextlib.contextmanager
def _one_sequence_per_row() -> Iterator[None]:
    """Hugging Face decoders called with ``input_ids`` alone: no packed sequences.

    Without an attention mask, transformers 5 checks ``position_ids`` for several sequences
    packed into one row (a training layout) with ``torch.diff``, which the exporter cannot
    write at opset 17, so a Llama or Qwen2 taking only ``input_ids`` failed to export. Outside
    a trace that check answers "not packed" for the positions a forward pass makes itself; the
    export takes that answer.
    """
    masking = sys.modules.get("transformers.masking_utils")
    original = getattr(masking, "find_packed_sequence_indices", None)
    if masking is None or original is None:
        yield
        return
    masking.find_packed_sequence_indices = lambda position_ids: None  # type: ignore[attr-defined]
    try:
        yield
    finally:
        masking.find_packed_sequence_indices = original  # type: ignore[attr-defined]


def export_onnx(
    model: nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    input_names: Iterable[str],
    path: Path,
    trace_warnings: list[str] | None = None,
    opset: int | None = None,
    exporter: str = "dynamo",
    kv_cache: bool = False,
    attention: str = "exported",
) -> Path:
    """Write ``model`` as ONNX with a dynamic batch axis; raise CandidateError on failure.

    ``exporter``: ``dynamo`` (the supported exporter, through onnxscript; its nodes are renamed
    from their ``pkg.torch.onnx.name_scopes`` metadata into scope names, see
    :func:`scope_names`) or ``torchscript`` (``torch.onnx.export(dynamo=False)``, nodes named
    by module scope), so the per-layer plans reach the same nodes either way. ``opset``: None
    is the exporter's default (:data:`DEFAULT_OPSET`). ``kv_cache``: one generation step of a
    causal LM with its KV cache as inputs and outputs (:func:`generation_names`; dynamo only).
    ``attention``: with ``kv_cache``, ``GroupQueryAttention`` writes each layer's attention as
    ONNX Runtime's operator of that name where the model's attention fits it
    (``tightfit.task._attention``; :func:`decoder_attention` says what a model gets), else
    ``exported``, as the exporter writes it.

    The tracer's warnings (a Python branch on a tensor's value, a tensor turned into a
    constant) are kept in ``trace_warnings`` when given: they name the line whose behaviour
    the trace may have frozen (:func:`verify_export` checks whether it did).
    """
    input_names = list(input_names)
    opset = opset or DEFAULT_OPSET[exporter]
    model.eval()
    chatter = tempfile.TemporaryFile(
        mode="w+b"
    )  # the exporter prints its IR graph on failure (C++)
    try:
        with (
            warnings.catch_warnings(record=True) as caught,
            torch.no_grad(),
            _fd_to(chatter, 1),
            fusable_attention(model),
            _one_sequence_per_row(),
            _covering_pools(model) as covering,
        ):
            warnings.simplefilter("always", torch.jit.TracerWarning)
            if kv_cache:
                onnx_bytes = _generation_bytes(model, input_names, opset, attention)
            elif exporter == "dynamo":
                onnx_bytes = _dynamo_bytes(model, example_inputs, input_names, opset)
            else:
                onnx_bytes = _torchscript_bytes(model, example_inputs, input_names, opset)
        if trace_warnings is not None:
            trace_warnings.extend(
                f"{w.filename}:{w.lineno}: {str(w.message).splitlines()[0]}"
                for w in caught
                if issubclass(w.category, torch.jit.TracerWarning)
            )
    except Exception as e:
        chatter.seek(0)
        logging.getLogger(__name__).debug(
            "export failed; exporter output:\n%s", chatter.read().decode(errors="replace")
        )
        raise CandidateError(f"ONNX export failed: {type(e).__name__}: {_why(e)}") from e
    finally:
        chatter.close()
        model.eval()  # export may flip train mode of submodules (offline-models-data.md §6.4)
    return atomic_write(path, global_pools(inline_shared_initializers(onnx_bytes), covering))


def _why(error: Exception) -> str:
    """The line of an exporter's error that says what went wrong: the dynamo exporter's
    "Exception summary" (its first line is boilerplate: "Failed to export the model with
    torch.export. This is step 1/3 ..."), else the first line; without terminal colours."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error)).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if "## Exception summary" in lines:
        after = lines[lines.index("## Exception summary") + 1 :]
        if after:
            return after[0][:500]
    return lines[0] if lines else type(error).__name__


def export_for(
    profile: HardwareProfile,
    model: nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    input_names: Iterable[str],
    path: Path,
    trace_warnings: list[str] | None = None,
) -> Path:
    """:func:`export_onnx` with ``profile``'s exporter and opset: how the baseline and every
    candidate of a search are exported."""
    return export_onnx(
        model,
        example_inputs,
        input_names,
        path,
        trace_warnings,
        opset=profile.export_opset,
        exporter=profile.exporter,
        kv_cache=profile.generation is not None,
        attention=attention_for(profile),
    )


def attention_for(profile: HardwareProfile) -> str:
    """How ``profile`` exports a decoder's attention: as one ``GroupQueryAttention`` per layer
    where it fuses its generation graphs (:func:`packs`, ONNX Runtime's CPU provider), else
    as exported."""
    return _attention.OP if packs(profile) else "exported"


def fuses(profile: HardwareProfile) -> bool:
    """Whether ``profile`` fuses its graphs: ``graph_fusion: auto`` on ONNX Runtime's CPU
    provider (a generation graph by ``kernels.fusion.fuse_decoder``'s narrower set). Not yet on ONNX
    Runtime's CUDA provider: fp16 on fused graphs has not run on a GPU here, and a baseline
    that fails there would stop the search."""
    return (
        profile.graph_fusion == "auto"
        and profile.runtime == "onnxruntime"
        and profile.execution_provider == "CPUExecutionProvider"
    )


def packs(profile: HardwareProfile) -> bool:
    """Whether ``profile``'s measured graphs have sibling MatMuls packed (``kernels.fusion.pack_siblings``):
    a fusing profile's generation graphs, where decoding one token is three small products per
    attention and two per MLP."""
    return fuses(profile) and profile.generation is not None


def decoder_attention(model: nn.Module, attention: str) -> str:
    """What a generation graph of ``model`` exported with ``attention`` holds: ``exported``,
    ``GroupQueryAttention``, or ``exported: <why the operator does not fit>``."""
    if attention == "exported":
        return attention
    if attention != _attention.OP:
        raise ValueError(f"attention: '{attention}' is not 'exported' or '{_attention.OP}'")
    inner = getattr(model, "model", model)
    why = _attention.unsupported(inner)
    return attention if why is None else f"exported: {why}"


def _torchscript_bytes(
    model: nn.Module, example_inputs: tuple[torch.Tensor, ...], input_names: list[str], opset: int
) -> bytes:
    buffer = io.BytesIO()
    torch.onnx.export(
        model,
        example_inputs,
        buffer,  # type: ignore[arg-type]  # file-like objects are accepted
        dynamo=False,
        opset_version=opset,
        input_names=input_names,
        output_names=["output"],
        dynamic_axes=dynamic_axes(example_inputs, input_names),
        do_constant_folding=True,
    )
    return buffer.getvalue()


def _dynamo_bytes(
    model: nn.Module, example_inputs: tuple[torch.Tensor, ...], input_names: list[str], opset: int
) -> bytes:
    import importlib.util

    if importlib.util.find_spec("onnxscript") is None:
        raise CandidateError(
            "the dynamo exporter needs the package 'onnxscript'; run 'pip install onnxscript' "
            "or set the profile's exporter: torchscript"
        )
    from tightfit._torch_private import torchlib_registry_cached

    folded = _batchnorm_inputs(model, example_inputs)
    with torchlib_registry_cached():
        program = torch.onnx.export(
            model,
            example_inputs,
            dynamo=True,
            opset_version=opset,
            input_names=input_names,
            output_names=["output"],
            dynamic_shapes=_dynamic_shapes(model, example_inputs, input_names),
            optimize=True,  # constant folding, and BatchNorm folded into the Conv before it
            verbose=False,
        )
    assert program is not None
    proto = program.model_proto
    scope_names(proto, folded)
    drop_initializer_shapes(proto)
    return proto.SerializeToString()


def _dynamic_shapes(
    model: nn.Module, example_inputs: tuple[torch.Tensor, ...], input_names: list[str]
) -> tuple[Any, ...]:
    """:func:`dynamic_axes` as ``torch.export`` takes them: shaped like ``forward``'s
    parameters (a ``forward(*inputs)``, as :class:`tightfit.task.HuggingFaceModel` has, takes
    one tuple), axes named by strings, which the exporter keeps as the ONNX dimensions' names.
    (torch's own conversion from ``dynamic_axes`` maps one input to each named parameter and
    fails on ``*inputs``.)"""
    import inspect

    axes = dynamic_axes(example_inputs, input_names)
    specs = [axes[name] for name in input_names]
    params = list(inspect.signature(model.forward).parameters.values())
    star = next((i for i, p in enumerate(params) if p.kind == p.VAR_POSITIONAL), None)
    if star is None:
        return tuple(specs)
    return (*specs[:star], tuple(specs[star:]))


PAST = "past_key_values"


def generation_names(layers: int) -> tuple[list[str], list[str]]:
    """A KV-cache graph's inputs and outputs: ``input_ids`` and ``past_key_values.N.key`` /
    ``.value`` per layer in, ``logits`` and ``present.N.key`` / ``.value`` out (the names
    Hugging Face Optimum and onnxruntime-genai use)."""
    kinds = ("key", "value")
    past = [f"{PAST}.{i}.{kind}" for i in range(layers) for kind in kinds]
    present = [f"present.{i}.{kind}" for i in range(layers) for kind in kinds]
    return ["input_ids", *past], ["logits", *present]


def _generation_bytes(
    model: nn.Module, input_names: Iterable[str], opset: int, attention: str
) -> bytes:
    """One generation step of a causal LM (``HuggingFaceModel.generation_step``), exported by
    the dynamo exporter with the batch, new-token and cache lengths dynamic, its attention as
    :func:`decoder_attention` says."""
    from torch.export import Dim

    from tightfit._torch_private import torchlib_registry_cached
    from tightfit.task import HuggingFaceModel

    if not isinstance(model, HuggingFaceModel):
        raise CandidateError(
            f"a generation profile exports a KV-cache graph, which needs a causal language "
            f"model given as model.hf (or a tightfit.task.HuggingFaceModel), not a "
            f"{type(model).__name__}"
        )
    if list(input_names) != ["input_ids"]:
        raise CandidateError(
            f"a generation profile feeds input_ids alone; the data gives {list(input_names)}"
        )
    shapes = model.cache_shapes()
    # sizes 2, 3 and 4, not 0 or 1, which torch.export would take as constants
    ids = torch.ones((2, 3), dtype=torch.long)
    past = tuple(torch.zeros((2, heads, 4, dim)) for heads, dim in shapes for _ in range(2))
    inputs, outputs = generation_names(len(shapes))
    batch, new, length = Dim("batch"), Dim("new_tokens"), Dim("past_length")
    # forward(*inputs): one argument, the tuple of all inputs
    dynamic = (({0: batch, 1: new}, *({0: batch, 2: length} for _ in past)),)
    operator = decoder_attention(model, attention) == _attention.OP
    with (
        _attention.group_query_attention(model.model) if operator else contextlib.nullcontext(),
        model.generation_step(),
        torchlib_registry_cached(),
    ):
        program = torch.onnx.export(
            model,
            (ids, *past),
            dynamo=True,
            opset_version=opset,
            input_names=inputs,
            output_names=outputs,
            dynamic_shapes=dynamic,
            optimize=True,
            verbose=False,
        )
    assert program is not None
    proto = program.model_proto
    scope_names(proto)
    drop_initializer_shapes(proto)
    return proto.SerializeToString()


NAME_SCOPES = "pkg.torch.onnx.name_scopes"


def _batchnorm_inputs(model: nn.Module, example_inputs: tuple[torch.Tensor, ...]) -> dict[str, str]:
    """BatchNorm module path -> the path of the Conv whose output it normalises, from one
    forward pass: the dynamo exporter folds such a BatchNorm into its Conv and names the fused
    Conv after the BatchNorm, while plans name the Conv."""
    made: dict[int, str] = {}
    fed: dict[str, str] = {}
    convs = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
    norms = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)

    def after_conv(path: str):  # type: ignore[no-untyped-def]
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            made[id(output)] = path

        return hook

    def before_norm(path: str):  # type: ignore[no-untyped-def]
        def hook(module: nn.Module, args: tuple) -> None:
            if args and id(args[0]) in made:
                fed[path] = made[id(args[0])]

        return hook

    handles = [
        m.register_forward_hook(after_conv(p))
        for p, m in model.named_modules()
        if isinstance(m, convs)
    ] + [
        m.register_forward_pre_hook(before_norm(p))
        for p, m in model.named_modules()
        if isinstance(m, norms)
    ]
    run_watched(model, example_inputs, handles)
    return fed


def scope_names(
    model: onnx.ModelProto, folded: dict[str, str] | None = None, unnamed_only: bool = False
) -> None:
    """Rename the dynamo exporter's nodes after the modules they come from, as TorchScript
    names them (``/layer1/layer1.0/conv1/Conv_3``), so :func:`module_of_node` reads both.

    The module paths come from each node's ``pkg.torch.onnx.name_scopes`` metadata (the
    enclosing modules' full paths, then the operator). A Conv whose scopes end in a BatchNorm
    of ``folded`` (BatchNorm path -> Conv path) was fused from that Conv: it takes the Conv's
    path. Nodes without metadata keep their names. ``unnamed_only``: rename only the nodes
    not named so yet (the fused nodes of ``kernels.fusion``, which carry the scopes of the
    nodes they replaced), keeping every other name.
    """
    folded = folded or {}
    used: set[str] = {n.name for n in model.graph.node} if unnamed_only else set()
    for i, node in enumerate(model.graph.node):
        meta = {p.key: p.value for p in node.metadata_props}
        if NAME_SCOPES not in meta or (unnamed_only and node.name.startswith("/")):
            continue
        scopes = [s for s in ast_list(meta[NAME_SCOPES])[:-1] if s]  # minus the root and the op
        if scopes and scopes[-1] in folded and node.op_type == "Conv":
            conv = folded[scopes[-1]]
            scopes = scopes[:-1]
            # under the same parent: keep the parents; else the Conv's own path alone
            scopes = [*scopes, conv] if scopes and conv.startswith(scopes[-1] + ".") else [conv]
        name = "/" + "/".join([*scopes, node.op_type]) if scopes else f"/{node.op_type}"
        if name in used:
            name = f"{name}_{i}"
        used.add(name)
        node.name = name


def ast_list(text: str) -> list[str]:
    """The metadata's list of names (written as a Python/JSON list of strings)."""
    import ast

    value = ast.literal_eval(text)
    return [str(v) for v in value] if isinstance(value, (list, tuple)) else [str(value)]


def drop_initializer_shapes(model: onnx.ModelProto) -> None:
    """Remove the ``value_info`` entries the dynamo exporter writes for initializers.

    An initializer carries its own shape, so a second copy can only go stale: onnxruntime's
    dynamic quantizer (1.31 and older) transposes a Gemm's weight to turn it into a MatMul,
    then runs shape inference, which fails on the old entry ("Inferred shape and existing
    shape differ in dimension 0"), so every model with a Linear head lost dynamic int8.
    """
    initializers = {t.name for t in model.graph.initializer}
    kept = [v for v in model.graph.value_info if v.name not in initializers]
    del model.graph.value_info[:]
    model.graph.value_info.extend(kept)


def int_attribute(node: onnx.NodeProto, name: str, default: int | None = None) -> int:
    """``node``'s integer attribute ``name``; ``default`` where it has none (None: it must)."""
    value = next((int(a.i) for a in node.attribute if a.name == name), default)
    if value is None:
        raise KeyError(f"{node.op_type} node '{node.name}' has no attribute '{name}'")
    return value


def replace_nodes(
    model: onnx.ModelProto, nodes: list[onnx.NodeProto], replacements: dict[int, list]
) -> None:
    """Rebuild ``model``'s nodes from ``nodes`` (the graph's, in order, held by the caller:
    ``replacements`` is keyed by their identities, as names need not be unique or set), each
    replaced by its list in ``replacements`` (empty: removed); drop the initializers no node
    reads any more."""
    if not replacements:
        return
    kept: list[onnx.NodeProto] = []
    for node in nodes:
        kept.extend(replacements.get(id(node), [node]))
    graph = model.graph
    del graph.node[:]
    graph.node.extend(kept)
    drop_unread_initializers(graph)


def drop_unread_initializers(graph: onnx.GraphProto) -> None:
    """Remove the initializers no node of ``graph`` reads (after a rewrite replaced nodes)."""
    read = {t for n in graph.node for t in n.input}
    kept = [i for i in graph.initializer if i.name in read]
    del graph.initializer[:]
    graph.initializer.extend(kept)


def inline_shared_initializers(onnx_bytes: bytes) -> bytes:
    """Replace every ``Identity`` of an initializer by a copy of that initializer.

    The exporter stores equal constants once and hands them to their other users through
    Identity nodes: the zero biases that BatchNorm folding leaves in a freshly initialised CNN
    are all one tensor. ONNX Runtime's quantizer then finds a bias that is no initializer
    ("Expected bias ... to be an initializer"), leaves that Conv unquantized, and the int8
    graph runs those Convs in float: on a ResNet-18, 13 of 20 Convs. Each copy takes the
    Identity's output name, so every node keeps its inputs.
    """
    model = onnx.load_model_from_string(onnx_bytes)
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    outputs = {o.name for o in graph.output}
    shared = [
        n
        for n in graph.node
        if n.op_type == "Identity" and n.input[0] in initializers and n.output[0] not in outputs
    ]
    if not shared:
        return onnx_bytes
    for node in shared:
        copy = onnx.TensorProto()
        copy.CopyFrom(initializers[node.input[0]])
        copy.name = node.output[0]
        graph.initializer.append(copy)
        graph.node.remove(node)
    return model.SerializeToString()


@contextlib.contextmanager
def _covering_pools(model: nn.Module) -> Iterator[set[str]]:
    """During the trace, collect the ``AvgPool`` modules whose one window covers their whole
    input (unpadded): the exported graph only knows their input sizes symbolically."""
    covering: set[str] = set()

    def watch(path: str):  # type: ignore[no-untyped-def]
        def pre(module: nn.Module, args: tuple) -> None:
            spatial = tuple(args[0].shape[2:])
            kernel: Any = getattr(module, "kernel_size", 0)
            padding: Any = getattr(module, "padding", 0)
            kernel = (kernel,) * len(spatial) if isinstance(kernel, int) else tuple(kernel)
            pads = (padding,) if isinstance(padding, int) else tuple(padding)
            if not any(pads) and all(k >= s for k, s in zip(kernel, spatial, strict=False)):
                covering.add(path)

        return pre

    handles = [
        m.register_forward_pre_hook(watch(p))
        for p, m in model.named_modules()
        if isinstance(m, (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d))
    ]
    try:
        yield covering
    finally:
        for h in handles:
            h.remove()


def global_pools(onnx_bytes: bytes, covering: set[str]) -> bytes:
    """Write the ``AveragePool`` of a module in ``covering`` (one window over its whole input)
    as the ``GlobalAveragePool`` it is.

    Hugging Face's EfficientNet pools with ``AvgPool2d(1280, ceil_mode=True)`` on a 7x7 map:
    in float ONNX Runtime averages the 49 values, as torch does, but once quantized its fused
    ``QLinearAveragePool`` divides by the whole window and every logit becomes the bias (the
    uniform int8 candidate's output, ONNX Runtime's own ``quantize_static`` alike; right with
    basic optimizations only). Same value, and an op both paths agree on.
    """
    if not covering:
        return onnx_bytes
    model = onnx.load_model_from_string(onnx_bytes)
    changed = False
    for node in model.graph.node:
        if node.op_type == "AveragePool" and set(module_of_node(node.name)) & covering:
            node.op_type = "GlobalAveragePool"
            del node.attribute[:]
            changed = True
    return model.SerializeToString() if changed else onnx_bytes


def module_of_node(node_name: str) -> list[str]:
    """Module paths enclosing a TorchScript-exported node, outermost first.

    The exporter names scopes by attribute, except children of containers, which carry their
    parent's name: ``/layer1/shortcut/shortcut.0/Conv`` -> ``['layer1', 'layer1.shortcut',
    'layer1.shortcut.0']``; ``/features/features.3/Conv`` -> ``['features', 'features.3']``.
    """
    paths: list[str] = []
    current = ""
    previous = ""
    for part in node_name.split("/")[1:-1]:
        if not part:
            continue
        if previous and part.startswith(previous + "."):
            current = current + part[len(previous) :]  # "shortcut.0" under "...shortcut"
        else:
            current = f"{current}.{part}" if current else part
        previous = part
        paths.append(current)
    return paths


def nodes_by_module(
    model: onnx.ModelProto, ops: Iterable[str] = COMPUTE_OPS
) -> dict[str, list[str]]:
    """Every module path -> the names of its compute nodes (a module owns its submodules' nodes)."""
    ops = set(ops)
    out: dict[str, list[str]] = {}
    for node in model.graph.node:
        if node.op_type not in ops:
            continue
        for scope in module_of_node(node.name):
            out.setdefault(scope, []).append(node.name)
    return out


def node_op_types(model: onnx.ModelProto) -> dict[str, str]:
    return {n.name: n.op_type for n in model.graph.node}


def has_constant_weight(model: onnx.ModelProto, node_name: str) -> bool:
    """True if the node is a MatMul whose B input is an initializer (MatMulNBits' condition),
    or the transpose of one, which :func:`fold_weight_transposes` makes one."""
    inits = {i.name for i in model.graph.initializer}
    for node in model.graph.node:
        if node.name == node_name:
            if node.op_type != "MatMul" or len(node.input) < 2:
                return False
            return node.input[1] in inits or _transposed_initializer(model, node) is not None
    return False


def _transposed_initializer(model: onnx.ModelProto, node: onnx.NodeProto) -> str | None:
    """The initializer whose 2-D transpose is ``node``'s second input, if that is how it is
    made (a tied language-model head: ``lm_head`` is the embedding matrix, transposed, and the
    exporter's constant folding leaves a tensor that large unfolded)."""
    inits = {i.name: i for i in model.graph.initializer}
    for producer in model.graph.node:
        if node.input[1] in producer.output:
            if producer.op_type != "Transpose" or producer.input[0] not in inits:
                return None
            perm = [list(a.ints) for a in producer.attribute if a.name == "perm"]
            if len(inits[producer.input[0]].dims) == 2 and perm in ([], [[1, 0]]):
                return producer.input[0]
            return None
    return None


def fold_weight_transposes(src: Path, dst: Path, nodes: Iterable[str] | None = None) -> Path:
    """``src`` with the MatMul weights that reach ``nodes`` (None: every MatMul) through a
    Transpose of an initializer made initializers of their own, written to ``dst``; ``src``
    itself where there is none.

    The quantizers (MatMulNBits, dynamic and static int8) act only on a MatMul whose weight is
    an initializer, so without this a tied head (SmolLM2's: 28 M of its 135 M parameters, read
    in full at every decoded token) stays float under a plan that says 4 bits. The embedding
    keeps its own copy for its Gather: the float file grows by the head's size, which the
    quantized head then shrinks.
    """
    model = onnx.load(str(src))
    wanted = None if nodes is None else set(nodes)
    inits = {i.name: i for i in model.graph.initializer}
    folded: dict[str, str] = {}
    for node in model.graph.node:
        if node.op_type != "MatMul" or len(node.input) < 2 or node.input[1] in inits:
            continue
        if wanted is not None and node.name not in wanted:
            continue
        source = _transposed_initializer(model, node)
        if source is None:
            continue
        if source not in folded:
            folded[source] = f"{source}_transposed"
            weight = onnx.numpy_helper.to_array(inits[source])
            tensor = onnx.numpy_helper.from_array(np.ascontiguousarray(weight.T), folded[source])
            model.graph.initializer.append(tensor)
        node.input[1] = folded[source]
    if not folded:
        return src
    used = {name for n in model.graph.node for name in n.input} | {
        o.name for o in model.graph.output
    }
    dead = [n for n in model.graph.node if n.op_type == "Transpose" and not set(n.output) & used]
    for node in dead:
        model.graph.node.remove(node)
    onnx.save(model, str(dst))
    return dst


#: an export agrees with torch when max |onnx - torch| <= RTOL * max |torch| + ATOL
RTOL, ATOL = 1e-3, 1e-5


def _first_tensor(output: object) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output:
        return _first_tensor(output[0])
    if isinstance(output, dict) and output:
        return _first_tensor(next(iter(output.values())))
    raise TypeError(f"the model's output is a {type(output).__name__}, not a tensor")


def verify_export(
    model: nn.Module,
    onnx_path: Path,
    inputs: dict[str, np.ndarray],
    max_samples: int = 32,
    singles: int = 8,
) -> str | None:
    """Compare the ONNX file's first output with torch's on real inputs; None if they agree,
    else what differs.

    ``inputs`` are validation samples by input name. Up to ``max_samples`` of them, spread over
    the set, run as one batch, then ``singles`` of them one at a time (batch 1, as latency is
    measured): a forward that branches on its input's values or shape is traced with the
    example's branch baked in, and differs here on inputs that take the other one.
    """
    import onnxruntime as ort

    n = len(next(iter(inputs.values())))
    rows = np.unique(np.linspace(0, n - 1, num=min(n, max_samples)).astype(int))
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    layout = cache_layout(session)
    one_by_one = np.unique(np.linspace(0, n - 1, num=min(n, singles)).astype(int))
    for batch in (rows, *(one_by_one[i : i + 1] for i in range(len(one_by_one)))):
        feed = {k: np.ascontiguousarray(v[batch]) for k, v in inputs.items()}
        with torch.no_grad():
            expected = _first_tensor(model(*(torch.from_numpy(a) for a in feed.values())))
        want = expected.detach().float().numpy()
        got = session.run(None, with_empty_cache(feed, layout))[0].astype(np.float32)
        if got.shape != want.shape:
            return f"on a batch of {len(batch)} the ONNX output has shape {got.shape}, torch's {want.shape}"
        diff = np.abs(got - want)
        scale = float(np.abs(want).max()) if want.size else 0.0
        if not np.isfinite(diff).all() or float(diff.max(initial=0.0)) > RTOL * scale + ATOL:
            worst = int(np.unravel_index(int(np.nanargmax(diff)), diff.shape)[0])
            return (
                f"on a batch of {len(batch)} validation samples the ONNX output differs from "
                f"torch's by up to {float(np.nanmax(diff)):.3g} (outputs up to {scale:.3g}; "
                f"worst at sample {int(batch[worst])})"
            )
    return None
