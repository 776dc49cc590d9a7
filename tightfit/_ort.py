"""ONNX Runtime sessions configured by a hardware profile, and batched inference.

Below kernels and evaluators: both run exported graphs (bias correction, accuracy).
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from tightfit.hardware_profiles import HardwareProfile


def make_session(
    path: Path | str | bytes,
    profile: HardwareProfile | None = None,
    threads: int | None = None,
) -> ort.InferenceSession:
    """A session with fixed threads, spinning off (spinning burns cores other work needs)
    unless ``profile`` asks for it (``thread_spinning``)."""
    options = ort.SessionOptions()
    intra = threads or (profile.intra_op_threads if profile else 1)
    options.intra_op_num_threads = intra
    options.inter_op_num_threads = profile.inter_op_threads if profile else 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    spin = "1" if profile is not None and profile.thread_spinning else "0"
    options.add_session_config_entry("session.intra_op.allow_spinning", spin)
    options.add_session_config_entry("session.inter_op.allow_spinning", spin)
    options.log_severity_level = 3
    providers = [profile.execution_provider] if profile else ["CPUExecutionProvider"]
    model = path if isinstance(path, bytes) else str(path)
    return ort.InferenceSession(model, options, providers=providers)


EVAL_BATCH = 64
#: the KV-cache inputs of a generation graph (``past_key_values.N.key`` / ``.value``)
PAST = "past_key_values."
#: the input a generation graph with a shared cache buffer takes its sequence lengths from:
#: ones over every position, cached and new, ``(batch, past + new)`` (onnxruntime-genai's name)
MASK = "attention_mask"
#: the operator that reads a past cache without copying it when past and present are one buffer
_CACHE_OP = "GroupQueryAttention"


def shares_cache_buffer(graph: Any, lengths_from_mask: bool = True) -> bool:
    """Whether a generation graph (an ``onnx.GraphProto``) can run with its past and present
    cache as one preallocated buffer as long as the whole generation, as onnxruntime-genai's
    generator runs the builder's graphs: every cache input is read by ``GroupQueryAttention``
    alone, as its past key or value, so nothing depends on the buffer's length, and the graph
    takes :data:`MASK`, which the operators' sequence lengths come from. The operator then
    writes only the new positions into the buffer it reads, instead of copying the whole past
    into a new present at every step.

    ``lengths_from_mask=False``: whether that holds once the operators' lengths (inputs 5 and
    6) are taken from a mask, whatever they are computed from now (``kernels.fusion.
    lengths_from_mask`` asks before it rewrites them)."""
    names = {i.name for i in graph.input}
    if lengths_from_mask and MASK not in names:
        return False
    past = {n for n in names if n.startswith(PAST)}
    if not past:
        return False
    producer = {out: node for node in graph.node for out in node.output}

    def reads(tensors: list[str], skip_lengths: bool) -> list[tuple[Any, int, str]]:
        """(node, input index, tensor) of every input read by the nodes ``tensors`` need."""
        found, seen = [], set()
        stack = [producer[t] for t in tensors if t in producer]
        while stack:
            node = stack.pop()
            if id(node) in seen:
                continue
            seen.add(id(node))
            for k, tensor in enumerate(node.input):
                if skip_lengths and node.op_type == _CACHE_OP and k in (5, 6):
                    continue  # to be taken from the mask
                found.append((node, k, tensor))
                if tensor in producer:
                    stack.append(producer[tensor])
        return found

    live = reads([o.name for o in graph.output], skip_lengths=not lengths_from_mask)
    for node, k, tensor in live:
        if tensor in past and not (node.op_type == _CACHE_OP and k in (3, 4)):
            return False
    if lengths_from_mask:  # every operator's lengths are the mask's, not the new tokens' count
        for node in {id(n): n for n, _, _ in live if n.op_type == _CACHE_OP}.values():
            if len(node.input) < 7 or any(
                MASK not in {t for _, _, t in reads([node.input[k]], False)} | {node.input[k]}
                for k in (5, 6)
            ):
                return False
    return True


def cache_layout(source: ort.InferenceSession | Path | str | Any) -> dict[str, tuple[int, int]]:
    """Each KV-cache input of a graph -> its (kv heads, head dim); empty for other graphs.

    ``source``: a session, an ONNX file (its inputs are read without its weights' data) or a
    loaded ``onnx.GraphProto``."""
    layout = {}
    for name, shape in _input_shapes(source).items():
        if not name.startswith(PAST) or len(shape) != 4:
            continue
        heads, dim = shape[1], shape[3]
        if not isinstance(heads, int) or not isinstance(dim, int):
            raise ValueError(
                f"the cache input {name} has shape {shape}: its heads and head dimension must "
                "be numbers"
            )
        layout[name] = (heads, dim)
    return layout


def _input_shapes(source: ort.InferenceSession | Path | str | Any) -> dict[str, list[Any]]:
    if isinstance(source, ort.InferenceSession):
        return {i.name: list(i.shape) for i in source.get_inputs()}
    import onnx

    if isinstance(source, onnx.GraphProto):
        graph = source
    else:
        graph = onnx.load(str(source), load_external_data=False).graph
    return {
        i.name: [d.dim_value if d.HasField("dim_value") else d.dim_param
                 for d in i.type.tensor_type.shape.dim]
        for i in graph.input
    }  # fmt: skip


def generation_interface(path: Path | str) -> dict[str, Any]:
    """How a generation graph is run, as its manifest states it: ``inputs`` and ``outputs``
    (name -> element type and shape, symbolic dimensions by name), ``cache`` (each past input,
    the present output that comes back for it, its key/value heads and head dimension; a
    pruned model's layers can differ) and ``cache_buffer`` (``shared``: the past and present
    may be one preallocated buffer, :func:`shares_cache_buffer`; ``copied``: each step's past
    is the last step's present, exactly as long as what was cached)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph

    def described(values: Any) -> dict[str, dict[str, Any]]:
        return {
            v.name: {
                "type": onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name,
                "shape": [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim],
            }
            for v in values
        }

    inputs, outputs = described(graph.input), described(graph.output)
    layout = cache_layout(graph)  # the graph loaded above, not the file again
    presents = [o for o in outputs if o.startswith("present.")]
    cache = [
        {"input": name, "output": name.replace(PAST, "present.", 1), "kv_heads": h, "head_dim": d}
        for name, (h, d) in layout.items()
        if name.replace(PAST, "present.", 1) in presents
    ]  # fmt: skip
    return {
        "inputs": inputs,
        "outputs": outputs,
        "cache": cache,
        "cache_buffer": "shared" if shares_cache_buffer(graph) else "copied",
    }


def step_feed(
    inputs: dict[str, np.ndarray],
    cache: dict[str, np.ndarray],
    layout: dict[str, tuple[int, int]],
    takes: Collection[str] = (),
) -> dict[str, np.ndarray]:
    """The feed of one generation step: ``inputs`` (``input_ids`` ``(batch, new)``, and what
    else the data gives), the cache so far (``cache``; each cache input of ``layout`` it lacks
    gets length 0: a prefill), and, where the graph ``takes`` them and ``inputs`` has none,
    the ``attention_mask`` over every position (cached and new) and the new tokens'
    ``position_ids`` (onnxruntime-genai's graphs take the mask)."""
    n, new = inputs["input_ids"].shape
    feed = with_empty_cache({**inputs, **cache}, layout)
    past = next(iter(feed[name] for name in layout), np.zeros((0, 0, 0))).shape[2]
    if "attention_mask" in takes and "attention_mask" not in inputs:
        feed["attention_mask"] = np.ones((n, past + new), dtype=np.int64)
    if "position_ids" in takes and "position_ids" not in inputs:
        feed["position_ids"] = np.broadcast_to(np.arange(past, past + new), (n, new)).copy()
    return feed


def with_empty_cache(
    feed: dict[str, np.ndarray], layout: dict[str, tuple[int, int]]
) -> dict[str, np.ndarray]:
    """``feed`` plus an empty cache (past length 0) for each cache input of ``layout`` it lacks:
    a generation graph run on whole sequences, as a prefill, computes the plain forward."""
    if not layout:
        return feed
    n = len(next(iter(feed.values())))
    empty = {
        name: np.zeros((n, heads, 0, dim), dtype=np.float32)
        for name, (heads, dim) in layout.items()
        if name not in feed
    }
    return {**feed, **empty}


def predict(onnx_path: Path, inputs: dict[str, np.ndarray], threads: int = 1) -> np.ndarray:
    """Run the model over ``inputs`` in batches (a generation graph with an empty cache);
    return the stacked first output."""
    session = make_session(onnx_path, threads=threads)
    layout = cache_layout(session)
    takes = {i.name for i in session.get_inputs()}
    n = len(next(iter(inputs.values())))
    outs = []
    for i in range(0, n, EVAL_BATCH):
        feed = {k: v[i : i + EVAL_BATCH] for k, v in inputs.items()}
        if layout:  # a generation graph: whole sequences as one prefill
            feed = step_feed(feed, {}, layout, takes)
        outs.append(session.run(None, feed)[0])
    return np.concatenate(outs)
