"""A per-layer latency table: each compute layer of a candidate, timed on its own.

The opt-in latency predictor's feature (``latency.layer_table``; ``evaluators.predictor`` says
why it is not the default). Every Conv, Gemm, MatMul (and their int8 and 4-bit forms) of a
candidate's ONNX graph is cut out with its precision context, the Q/DQ (or dynamic
quantization) around its activation input and output, as ONNX Runtime fuses them, into a
one-layer model (``onnx.utils.Extractor``) and timed alone under the profile's session options.
The table is keyed by the one-layer model's architecture signature (shapes, attributes and
precision, not weight values), so a layer shape met once is never timed again: a search of a
few dozen candidates meets a few dozen shapes per layer at most.

This is the lookup table of hardware-aware NAS (ProxylessNAS, OFA, APQ), built lazily from the
shapes a search actually meets instead of from the whole space up front. Timed quietly, the
sum of a candidate's layer times ranks candidates far apart as the runtime does, dispatch and
cache effects included (int8 on a CPU without VNNI, small layers bound by dispatch); timed on
a compress worker beside other compression, it is noisy.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, shape_inference
from onnx.utils import Extractor

from tightfit.evaluators.latency_cache import LatencyCache, architecture_signature
from tightfit.hardware_profiles import HardwareProfile

COMPUTE = {
    "Conv",
    "ConvTranspose",
    "Gemm",
    "MatMul",
    "MatMulNBits",
    "MatMulInteger",
    "ConvInteger",
}
_WRAPPERS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "Cast"}
WARMUP_S = 0.01
TIME_S = 0.03
MIN_RUNS = 20


@dataclass
class Layers:
    """A candidate's compute layers: the key of each (repeats kept) and the one-layer models."""

    keys: list[str] = field(default_factory=list)
    models: dict[str, bytes] = field(default_factory=dict)
    skipped: int = 0  # layers whose shapes shape inference could not fix

    def total_ms(self, table: dict[str, float]) -> float:
        return float(sum(table[k] for k in self.keys))


def _fix_inputs(model: onnx.ModelProto, input_shapes: dict[str, tuple[int, ...]]) -> None:
    for inp in model.graph.input:
        if inp.name in input_shapes:
            dims = inp.type.tensor_type.shape.dim
            for d, size in zip(dims, input_shapes[inp.name], strict=False):
                if not d.HasField("dim_value"):  # symbolic (batch, sequence): the profile's
                    d.Clear()
                    d.dim_value = int(size)


def _static(graph: onnx.GraphProto) -> set[str]:
    """Tensors computed from initializers and constants alone (weights, scales, shapes)."""
    known = {i.name for i in graph.initializer}
    for node in graph.node:  # ONNX graphs are topologically sorted
        if all(not name or name in known for name in node.input):
            known.update(node.output)
    return known


def _entry(name: str, producer: dict[str, onnx.NodeProto], static: set[str]) -> str:
    """The float tensor a layer's activation input starts from: back through Q/DQ and casts."""
    seen = 0
    while name in producer and producer[name].op_type in _WRAPPERS and seen < 4:
        src = producer[name].input[0]
        if src in static:
            break
        name, seen = src, seen + 1
    return name


def _exit(name: str, consumers: dict[str, list[onnx.NodeProto]]) -> str:
    """The layer's output, through a QuantizeLinear that takes it alone (fused by the runtime)."""
    users = consumers.get(name, [])
    if len(users) == 1 and users[0].op_type == "QuantizeLinear":
        return users[0].output[0]
    return name


def layer_models(onnx_bytes: bytes, input_shapes: dict[str, tuple[int, ...]]) -> Layers:
    """The compute layers of a candidate, each as a one-layer ONNX model keyed by signature.

    ``input_shapes`` are the full input shapes the profile measures (batch included); they fix
    every intermediate shape, so each one-layer model is static.
    """
    model = onnx.load_from_string(onnx_bytes)
    _fix_inputs(model, input_shapes)
    model = shape_inference.infer_shapes(model)
    graph = model.graph
    static = _static(graph)
    producer = {out: n for n in graph.node for out in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in graph.node:
        for name in n.input:
            consumers.setdefault(name, []).append(n)
    typed = {vi.name: vi for vi in [*graph.value_info, *graph.input, *graph.output]}
    extractor = Extractor(model)
    out = Layers()
    for node in graph.node:
        if node.op_type not in COMPUTE:
            continue
        inputs = sorted({_entry(i, producer, static) for i in node.input if i and i not in static})
        outputs = [_exit(node.output[0], consumers)]
        if not inputs or not all(_is_static_shape(typed.get(t)) for t in [*inputs, *outputs]):
            out.skipped += 1
            continue
        try:
            sub = extractor.extract_model(inputs, outputs)
        except Exception:  # noqa: BLE001 - an odd graph loses this layer, not the prediction
            out.skipped += 1
            continue
        sub_bytes = sub.SerializeToString()
        key = architecture_signature(sub_bytes)
        out.keys.append(key)
        out.models.setdefault(key, sub_bytes)
    return out


def _is_static_shape(vi: onnx.ValueInfoProto | None) -> bool:
    if vi is None or not vi.type.tensor_type.HasField("shape"):
        return False
    return all(d.HasField("dim_value") and d.dim_value > 0 for d in vi.type.tensor_type.shape.dim)


def _feed(model: onnx.ModelProto, rng: np.random.Generator) -> dict[str, np.ndarray]:
    feed = {}
    inits = {i.name for i in model.graph.initializer}
    for inp in model.graph.input:
        if inp.name in inits:
            continue
        t = inp.type.tensor_type
        shape = [d.dim_value for d in t.shape.dim]
        dtype = helper.tensor_dtype_to_np_dtype(t.elem_type)
        if dtype.kind == "f":
            feed[inp.name] = rng.standard_normal(shape).astype(dtype)
        else:
            feed[inp.name] = np.ones(shape, dtype=dtype)
    return feed


def time_layer(model_bytes: bytes, profile: HardwareProfile, seed: int = 0) -> float:
    """Median milliseconds of one run of a one-layer model under ``profile``'s session options."""
    from tightfit._ort import make_session

    session = make_session(model_bytes, profile)
    feed = _feed(onnx.load_from_string(model_bytes), np.random.default_rng(seed))
    end = time.perf_counter() + WARMUP_S
    while time.perf_counter() < end:
        session.run(None, feed)
    times: list[float] = []
    end = time.perf_counter() + TIME_S
    while len(times) < MIN_RUNS or time.perf_counter() < end:
        t0 = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1e3)


def _empty_model() -> bytes:
    """An Identity on one float: what a run costs with no layer in it (dispatch, I/O binding)."""
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "empty", [x], [y])
    opsets = [helper.make_opsetid("", 17)]
    # the oldest IR version that opset needs, not onnx's newest: a runtime older than the onnx
    # package refuses a newer IR version (onnxruntime 1.31 reads up to 13, onnx 1.23 writes 14)
    model = helper.make_model(
        graph, opset_imports=opsets, ir_version=helper.find_min_ir_version_for(opsets)
    )
    return model.SerializeToString()


def applies(profile: HardwareProfile) -> bool:
    """Whether a compress worker can time layers as the target runs them: ONNX Runtime on CPU
    (a GPU target's layers need its GPU, which stage one does not hold), for one forward pass
    (a generation's decode steps run its layers at one token, which the table does not time)."""
    return (
        profile.runtime == "onnxruntime"
        and profile.execution_provider == "CPUExecutionProvider"
        and profile.generation is None
    )


def host() -> str:
    """The CPU a layer time belongs to (model and the flags that change kernels)."""
    from tightfit._machine import cpu_environment

    env = cpu_environment()
    return f"{env['cpu']}|{env['cpu_flags']}"


class LayerTable:
    """Layer times by one-layer signature, for one profile on this host; kept in the latency
    cache's SQLite file when ``cache`` is given, so later searches reuse them.

    A one-layer model's run also pays what every run pays (dispatch, binding inputs and
    outputs), once per layer where the whole model pays it once: the time of an empty model is
    subtracted from each layer's. Without it, factorizing a layer in two looks dearer than it is
    (on the digits example, rank correlation 0.938 without, 0.951 with).
    """

    def __init__(self, profile: HardwareProfile, cache: LatencyCache | None) -> None:
        import onnxruntime

        self.profile = profile
        self.cache = cache
        settings = profile.model_dump(
            mode="json", exclude={"name", "description", "calibration", "quantization"}
        )
        self.salt = json.dumps([settings, host(), onnxruntime.__version__], sort_keys=True)
        self.memory: dict[str, float] = {}
        self._overhead: float | None = None

    def _key(self, signature: str) -> str:
        return hashlib.sha256(f"{self.salt}|{signature}".encode()).hexdigest()

    def _lookup(self, signature: str, model: bytes) -> tuple[float, bool]:
        """(milliseconds, whether it was timed now)."""
        key = self._key(signature)
        ms = self.cache.get_layer(key) if self.cache is not None else None
        if ms is not None:
            return ms, False
        ms = time_layer(model, self.profile)
        if self.cache is not None:
            self.cache.put_layer(key, ms)
        return ms, True

    @property
    def overhead_ms(self) -> float:
        """What one run of an empty model costs on this host (subtracted from every layer)."""
        if self._overhead is None:
            self._overhead, _ = self._lookup("empty-model", _empty_model())
        return self._overhead

    def total_ms(self, layers: Layers) -> tuple[float, int]:
        """The sum of ``layers``' times, timing the shapes not in the table; and how many were
        timed now."""
        timed = 0
        for signature, model in layers.models.items():
            if signature in self.memory:
                continue
            ms, now = self._lookup(signature, model)
            timed += now
            self.memory[signature] = max(ms - self.overhead_ms, 0.0)
        return layers.total_ms(self.memory), timed
