"""Bias correction after weight quantization (Nagel et al. 2019, "Data-Free Quantization").

Rounding a layer's weights shifts the mean of its outputs: with ``W_q = W + e``,
``E[W_q x] - E[W x] = e E[x]``. The shift is systematic, so the next layers see biased inputs;
subtracting ``e E[x]`` from the layer's bias removes it. ``E[x]`` is the mean input of the layer
over the calibration data, taken from the float graph (the empirical variant of the paper).

It is done on the float ONNX, before the quantizer runs, with the quantization error computed
by ONNX Runtime's own functions and settings (``quantize_data`` with the axis, symmetry and
range rules of its QDQ quantizer; ``quantize_matmul_4bits`` for MatMulNBits), so ``e`` is the
error the quantized file really has; the weights themselves are untouched. The bias that
follows a MatMul (exported ``Linear``: ``MatMul`` then ``Add``) is corrected in its ``Add``.

It matters where weights are quantized coarsely (one scale per tensor, 4-bit blocks); with
per-channel int8 the shift is usually negligible. Where it helps is checked, not assumed: see
:func:`tightfit.kernels.quantization.Quantization.apply_onnx`.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from tightfit._ort import cache_layout, make_session, with_empty_cache

MAX_SAMPLES = 256
BATCH = 32
INT4_BLOCK = 32


@dataclass(frozen=True)
class WeightQuant:
    """How the int8 quantizer rounds weights (mirrors ONNX Runtime's QDQ quantizer)."""

    weight_type: str  # "QInt8" or "QUInt8"
    per_channel: bool
    reduce_range: bool
    int4_block: int = INT4_BLOCK  # MatMulNBits' block size (profile.quantization.int4_block_size)
    int4_grid: str = "symmetric"  # profile.quantization.int4_grid


def int8_error(weight: np.ndarray, axis: int | None, q: WeightQuant) -> np.ndarray:
    """``dequantize(quantize(weight)) - weight`` as ONNX Runtime's static quantizer does it.

    ``axis``: the per-channel axis (Conv 0, Gemm 0 or 1 by ``transB``, MatMul 1); ``None`` for
    one scale per tensor. Signed weights are symmetric (ONNX Runtime's default), unsigned not.
    """
    from onnxruntime.quantization.quant_utils import QuantType, quantize_data

    qtype = getattr(QuantType, q.weight_type).tensor_type
    symmetric = q.weight_type == "QInt8"

    def fake(w: np.ndarray) -> np.ndarray:
        zero, scale, quantized = quantize_data(
            w.ravel(), qtype, symmetric, reduce_range=q.reduce_range
        )
        deq = (quantized.astype(np.float64) - float(zero)) * float(scale)
        return deq.reshape(w.shape).astype(np.float32)

    if axis is None:
        return fake(weight) - weight
    moved = np.moveaxis(weight, axis, 0)
    deq = np.stack([fake(channel) for channel in moved])
    return np.moveaxis(deq, 0, axis) - weight


def minmax_blocks(
    weight: np.ndarray, bits: int, block_size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A ``[K, N]`` weight on each block's own range (``block_size`` along K): the codes
    ``[N, blocks, block_size]`` (0 to ``2^bits - 1``), each block's step and minimum ``[N,
    blocks]``; a weight is ``min + step * code``. Llama.cpp's Q4_1 grid, HQQ's before its
    optimization. A last block shorter than ``block_size`` is padded with its own first value,
    which widens no range."""
    k, n = weight.shape
    blocks = -(-k // block_size)
    padded = np.empty((blocks * block_size, n), np.float32)
    padded[:k] = weight
    padded[k:] = weight[(blocks - 1) * block_size]
    w = padded.T.reshape(n, blocks, block_size)
    low, high = w.min(axis=-1), w.max(axis=-1)
    step = (high - low) / ((1 << bits) - 1)
    step[step == 0] = 1.0
    codes = np.clip(np.rint((w - low[..., None]) / step[..., None]), 0, (1 << bits) - 1)
    return codes.astype(np.uint8), step.astype(np.float32), low.astype(np.float32)


def int4_error(
    weight: np.ndarray, block_size: int = INT4_BLOCK, grid: str = "symmetric"
) -> np.ndarray:
    """The error of MatMulNBits' 4-bit blocks on a ``[K, N]`` MatMul weight: symmetric (ONNX
    Runtime's quantizer) or on the ``minmax`` grid (:func:`minmax_blocks`)."""
    from tightfit._ort_private import quantize_matmul_4bits

    k, n = weight.shape
    if grid == "minmax":
        codes, step, low = minmax_blocks(weight, 4, block_size)
        deq = low[..., None] + step[..., None] * codes
        return deq.reshape(n, -1)[:, :k].T - weight
    blocks = (k + block_size - 1) // block_size
    padded = np.zeros((blocks * block_size, n), dtype=np.float32)
    padded[:k] = weight
    packed = np.zeros((n, blocks, block_size // 2), dtype=np.uint8)
    scales = np.zeros((n, blocks), dtype=np.float32)
    zero_points = np.zeros((n, (blocks + 1) // 2), dtype=np.uint8)
    quantize_matmul_4bits(packed, padded, scales, zero_points, block_size, n, padded.shape[0], True)
    low, high = packed & 0x0F, packed >> 4
    codes = np.stack([low, high], axis=-1).reshape(n, blocks, block_size).astype(np.float32)
    deq = (codes - 8.0) * scales[:, :, None]  # symmetric blocks: zero point 8
    return deq.reshape(n, -1)[:, :k].T - weight


def _mean_inputs(
    model: onnx.ModelProto, axes: dict[str, int], calibration: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Each tensor's mean over calibration samples and positions, per entry of its ``axes[t]``
    (the channel axis: 1 for Conv inputs, -1 for Gemm/MatMul inputs)."""
    tensors = sorted(axes)
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.output[:]
    for name in tensors:
        probe.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    with tempfile.TemporaryDirectory(prefix="bias-") as tmp:
        path = Path(tmp) / "probe.onnx"
        onnx.save(probe, str(path))
        session = make_session(path)
        layout = cache_layout(session)
        n = min(MAX_SAMPLES, len(next(iter(calibration.values()))))
        sums: dict[str, np.ndarray] = {}
        counts: dict[str, int] = {}
        for i in range(0, n, BATCH):
            feed = {k: v[i : min(i + BATCH, n)] for k, v in calibration.items()}
            feed = with_empty_cache(feed, layout)
            for name, value in zip(tensors, session.run(tensors, feed), strict=True):
                rows = np.moveaxis(np.asarray(value, dtype=np.float64), axes[name], -1)
                rows = rows.reshape(-1, rows.shape[-1])
                sums[name] = sums.get(name, 0) + rows.sum(axis=0)
                counts[name] = counts.get(name, 0) + rows.shape[0]
    return {k: (sums[k] / counts[k]).astype(np.float32) for k in tensors}


def correct_bias(
    src: Path,
    dst: Path,
    int8_nodes: set[str],
    int4_nodes: set[str],
    calibration: dict[str, np.ndarray],
    quant: WeightQuant,
) -> int:
    """Write ``src`` with the biases of the named nodes corrected; return how many were.

    Conv (1-D/2-D, grouped included), Gemm and MatMul-then-Add with constant weights are
    corrected; any other node is left alone.
    """
    model = onnx.load(str(src))
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    producers = {t: node for node in graph.node for t in node.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for t in node.input:
            consumers.setdefault(t, []).append(node)
    jobs = []  # (node, weight error as [out, in/groups, ...], groups, output scale)
    for node in graph.node:
        bits = 8 if node.name in int8_nodes else 4 if node.name in int4_nodes else 0
        if not bits or len(node.input) < 2 or node.input[1] not in inits:
            continue
        w = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "Conv" and bits == 8:
            err = int8_error(w, 0 if quant.per_channel else None, quant)
            jobs.append((node, err, int(attrs.get("group", 1)), 1.0))
        elif node.op_type == "Gemm" and bits == 8 and not attrs.get("transA", 0):
            trans_b = bool(attrs.get("transB", 0))
            axis = (0 if trans_b else 1) if quant.per_channel else None
            err = int8_error(w, axis, quant)
            scale = float(attrs.get("alpha", 1.0)) / float(attrs.get("beta", 1.0))
            jobs.append((node, err if trans_b else err.T, 1, scale))
        elif node.op_type == "MatMul" and w.ndim == 2:
            err = (
                int8_error(w, 1 if quant.per_channel else None, quant)
                if bits == 8
                else int4_error(w, quant.int4_block, quant.int4_grid)
            )
            jobs.append((node, err.T, 1, 1.0))
    if not jobs:
        return 0
    axes = {j[0].input[0]: 1 if j[0].op_type == "Conv" else -1 for j in jobs}
    means = _mean_inputs(model, axes, calibration)
    corrected = 0
    for node, err, groups, scale in jobs:
        ex = means[node.input[0]]
        per_in = err.reshape(err.shape[0], err.shape[1], -1).sum(axis=2)  # [out, in/groups]
        out_per_group = per_in.shape[0] // groups
        shift = np.concatenate(
            [
                per_in[g * out_per_group : (g + 1) * out_per_group]
                @ ex[g * per_in.shape[1] : (g + 1) * per_in.shape[1]]
                for g in range(groups)
            ]
        )
        if _shift_bias(graph, inits, producers, consumers, node, scale * shift):
            corrected += 1
    onnx.save(model, str(dst))
    return corrected


def _constant(name: str, inits: dict, producers: dict) -> np.ndarray | None:
    """The value of a constant tensor: an initializer, possibly behind Identity nodes (the
    exporter shares equal initializers that way)."""
    while name not in inits:
        node = producers.get(name)
        if node is None or node.op_type != "Identity":
            return None
        name = node.input[0]
    return numpy_helper.to_array(inits[name]).astype(np.float32)


def _shift_bias(
    graph: onnx.GraphProto,
    inits: dict[str, onnx.TensorProto],
    producers: dict[str, onnx.NodeProto],
    consumers: dict[str, list[onnx.NodeProto]],
    node: onnx.NodeProto,
    shift: np.ndarray,
) -> bool:
    """Give ``node`` a bias shifted by ``-shift``: Conv/Gemm input 2 (added when absent), or the
    constant operand of the Add after a MatMul. The new bias is a fresh initializer of its
    own, so a bias shared with other nodes stays as it was for them."""
    if node.op_type == "MatMul":
        after = consumers.get(node.output[0], [])
        if len(after) != 1 or after[0].op_type != "Add":
            return False
        owner = after[0]
        slots = [i for i, t in enumerate(owner.input) if t != node.output[0]]
        if len(slots) != 1:
            return False
        slot = slots[0]
    else:
        owner, slot = node, 2
    name = owner.input[slot] if slot < len(owner.input) else ""
    bias = _constant(name, inits, producers) if name else np.zeros_like(shift)
    if bias is None or bias.size != shift.size:
        return False  # not a constant, or a broadcast bias: leave it
    new_name = f"{node.name}/bias_corrected"
    corrected = (bias - shift.reshape(bias.shape)).astype(np.float32)
    graph.initializer.append(numpy_helper.from_array(corrected, new_name))
    while len(owner.input) <= slot:
        owner.input.append("")
    owner.input[slot] = new_name
    return True
