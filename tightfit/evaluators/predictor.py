"""Latency predictors fitted online on the search's own measurements, for pre-screening.

Two of them, each refitted on every measurement:

- ``LatencyPredictor`` (the default): features of the candidate's ONNX graph,
  multiply-accumulates per precision (float, int8 Q/DQ, 4-bit MatMulNBits), the number of
  operators (each costs a dispatch, which dominates small models) and the size of the weights
  (memory traffic), combined with non-negative weights (NNLS);
- ``LayerRatioPredictor`` (``latency.layer_table: true``, ONNX Runtime on CPU): the candidate's
  layers timed one by one (``evaluators.layer_table``), scaled by the median ratio of measured
  latency to that sum.

On 41 random digits candidates timed quietly, spread from 1x to 4x, the layer ratio ranked
best online (0.94 against 0.81). Inside a search it did not: over the 42 candidates an 80-trial
digits search measured (0.25-0.42 of the baseline's latency: the survivors of staged
evaluation), the graph fit ranked 0.81 online and the layer ratio 0.11; the layer times taken
in the search, on compress workers beside other compression, ranked 0.31 (0.004 in a later
run) against the same layers re-timed quietly (``benchmarks/predictor_replay.py``). Hence the
default. Against the mean of two joint re-measurements (``evaluators.measure_jointly``), which
rank each other at 0.99, the graph fit's online predictions rank 0.945. In a search they learn
from the compressed candidates' measurements only (``search._reuse.LatencyReuse`` says why).

They only decide which candidates are worth measuring: measured latency alone decides the
front, and the predictions made before each measurement are kept to report the predictor's
rank correlation.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import shape_inference

FEATURES = ("one", "mmac_float", "mmac_int8", "mmac_int4", "n_ops", "weight_mb")
_COMPUTE = {"Conv", "Gemm", "MatMul", "ConvTranspose", "MatMulNBits"}


def _shape(info: dict[str, list[int]], name: str) -> list[int] | None:
    dims = info.get(name)
    return dims if dims is not None and all(d > 0 for d in dims) else None


def graph_features(
    onnx_bytes: bytes, input_shapes: dict[str, tuple[int, ...]] | None = None
) -> dict[str, float]:
    """Features of one exported candidate, at ``input_shapes`` (the shapes latency is measured
    at: the profile's batch and sequence length) where given; shapes from ONNX shape inference.
    A dimension still unknown counts as 1."""
    model = onnx.load_from_string(onnx_bytes)
    for vi in model.graph.input:
        shape = (input_shapes or {}).get(vi.name)
        dims = vi.type.tensor_type.shape.dim
        if shape is not None and len(shape) == len(dims):
            for d, size in zip(dims, shape, strict=True):
                d.Clear()
                d.dim_value = int(size)
    try:
        model = shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - features degrade to what is known without shapes
        pass
    graph = model.graph
    shapes: dict[str, list[int]] = {}
    for vi in [*graph.value_info, *graph.input, *graph.output]:
        dims = [
            d.dim_value if d.HasField("dim_value") else 1 for d in vi.type.tensor_type.shape.dim
        ]
        shapes[vi.name] = dims
    for init in graph.initializer:
        shapes[init.name] = list(init.dims)
    producer = {out: n for n in graph.node for out in n.output}
    attrs = {
        n.name: {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        for n in graph.node
    }
    feats = dict.fromkeys(FEATURES, 0.0)
    feats["one"] = 1.0
    feats["weight_mb"] = len(onnx_bytes) / 1e6
    for node in graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear", "Identity", "Constant"):
            feats["n_ops"] += 1
        if node.op_type not in _COMPUTE:
            continue
        out = _shape(shapes, node.output[0])
        macs = 0.0
        if out is None:
            continue
        if node.op_type in ("Conv", "ConvTranspose"):
            w = _shape(shapes, node.input[1])
            if w is not None:
                macs = float(np.prod(out)) * float(np.prod(w[1:]))
        elif node.op_type == "MatMulNBits":
            k = attrs[node.name].get("K", 0)
            macs = float(np.prod(out)) * float(k)
        else:  # Gemm / MatMul: output elements x the reduced dimension
            a = _shape(shapes, node.input[0])
            if a is not None:
                trans_a = node.op_type == "Gemm" and attrs[node.name].get("transA", 0)
                macs = float(np.prod(out)) * float(a[0] if trans_a else a[-1])
        src = producer.get(node.input[0])
        if node.op_type == "MatMulNBits":
            feats["mmac_int4"] += macs / 1e6
        elif src is not None and src.op_type == "DequantizeLinear":
            feats["mmac_int8"] += macs / 1e6
        else:
            feats["mmac_float"] += macs / 1e6
    return feats


class LatencyPredictor:
    """latency_ms ~ non-negative weights . features, refitted on every new measurement.

    The default predictor, and the one for every candidate the layer table (when on) cannot
    time: a GPU profile, or layers timed on another CPU than the target's.
    """

    def __init__(self, features: tuple[str, ...] = FEATURES) -> None:
        self.features = features
        self.x: list[list[float]] = []
        self.y: list[float] = []
        self.coef: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.y)

    def add(self, features: dict[str, float], latency_ms: float) -> None:
        if not math.isfinite(latency_ms) or any(f not in features for f in self.features):
            return
        self.x.append([features[f] for f in self.features])
        self.y.append(latency_ms)
        self.coef = None

    def _fit(self) -> np.ndarray:
        from scipy.optimize import nnls

        x, y = np.asarray(self.x), np.asarray(self.y)
        scale = np.maximum(np.abs(x).max(axis=0), 1e-12)  # conditioning; undone below
        coef, _ = nnls(x / scale, y)
        return np.asarray(coef / scale)

    def predict(self, features: dict[str, float]) -> float | None:
        if len(self.y) < 3 or any(f not in features for f in self.features):
            return None
        if self.coef is None:
            self.coef = self._fit()
        return float(np.dot(self.coef, [features[f] for f in self.features]))


class LayerRatioPredictor:
    """latency_ms ~ s x the sum of the candidate's layer times (``evaluators.layer_table``), s
    the median ratio of measured latency to that sum over the measurements so far.

    One ratio, not a fitted line: a refitted intercept and slope move every prediction as
    measurements come in, and predictions made at different times stop ranking together (on
    quietly timed digits candidates, online rank correlation 0.924 with a non-negative line on
    the layer sum and the operator count, 0.938 with the ratio). Candidates without
    ``layer_ms`` are neither learned from nor predicted. Opt-in (``latency.layer_table``): see
    the module docstring for how it ranked inside a search.
    """

    def __init__(self) -> None:
        self.ratios: list[float] = []

    def __len__(self) -> int:
        return len(self.ratios)

    def add(self, features: dict[str, float], latency_ms: float) -> None:
        layer_ms = features.get("layer_ms", 0.0)
        if math.isfinite(latency_ms) and layer_ms > 0:
            self.ratios.append(latency_ms / layer_ms)

    def predict(self, features: dict[str, float]) -> float | None:
        if len(self.ratios) < 3 or features.get("layer_ms", 0.0) <= 0:
            return None
        return float(np.median(self.ratios)) * features["layer_ms"]


def held_out(features: list[dict[str, float]], latency_ms: list[float]) -> list[float | None]:
    """Each latency predicted by a ``LatencyPredictor`` fitted on all the others (leave-one-out).

    The predictor's accuracy on a search's candidates once it has the search's data, which the
    online predictions, each from the measurements before it (few, early in a search), are not.
    None where the features lack a predictor input or fewer than 3 others are usable.
    """
    out: list[float | None] = []
    for i in range(len(latency_ms)):
        fit = LatencyPredictor()
        for j, (f, y) in enumerate(zip(features, latency_ms, strict=True)):
            if j != i:
                fit.add(f, y)
        out.append(fit.predict(features[i]))
    return out


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman rank correlation (NaN with fewer than 3 pairs or a constant side)."""
    if len(a) < 3:
        return float("nan")
    from scipy.stats import spearmanr

    rho = spearmanr(a, b).statistic
    return float(rho) if rho == rho else float("nan")
