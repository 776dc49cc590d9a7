from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnx
import torch

from tests import models
from tests.conftest import make_ctx
from tightfit.config import CallableSpec, SpaceSpec
from tightfit.evaluators import predict
from tightfit.kernels import compress, discover_units
from tightfit.spaces import Candidate
from tightfit.task import TaskData, load_data


def _ops(path) -> list[str]:
    return [n.op_type for n in onnx.load(str(path)).graph.node]


def _run(path, feed: dict) -> list[np.ndarray]:
    """Every output of the graph at ``path``."""
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feed)


def test_int8_only_where_asked(tiny_model, tiny_ctx, digits, tmp_path) -> None:
    one = compress(
        tiny_model, Candidate(base_model="m", bits={"conv2": 8}), tiny_ctx, tmp_path / "one"
    )
    graph = onnx.load(str(one.onnx_path)).graph
    quantized = {
        n.name
        for n in graph.node
        if n.op_type == "Conv"
        and any("DequantizeLinear" in i or "_DequantizeLinear" in i for i in n.input)
    }
    assert any("conv2" in name for name in quantized)
    assert not any("conv1" in name or "stem" in name for name in quantized)
    # int8 keeps the answers close on real data
    x = digits.validation["image"][:64]
    ref = predict(tiny_ctx.baseline_onnx, {"image": x})
    q = predict(one.onnx_path, {"image": x})
    assert np.mean(ref.argmax(1) == q.argmax(1)) > 0.9


def test_int4_matmulnbits_for_matmul_layers(tmp_path, fast_profile) -> None:
    model = models.token_mlp()
    data = load_data(CallableSpec(callable="tests.models:token_data"))
    ctx = make_ctx(model, data, fast_profile, tmp_path, classifier="head")
    spec = SpaceSpec.model_validate({"quantize": {"bits": [32, 8, 4]}})
    units = {u.param_name: u for u in discover_units(model, ctx, spec)}
    assert units["up.bits"].choices == (32, 8, 4)  # Linear on 3-D input exports as MatMul
    out = compress(model, Candidate(base_model="m", bits={"up": 4, "down": 8}), ctx, tmp_path / "q")
    ops = _ops(out.onnx_path)
    assert ops.count("MatMulNBits") == 1 and "QuantizeLinear" in ops
    x = data.validation["tokens"][:8]
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(predict(out.onnx_path, {"tokens": x}), ref, atol=0.15)
    assert isinstance(data, TaskData)
    # 4 bits for one layer is 4 bits for that layer only: ONNX Runtime's quantizer takes every
    # MatMul unless told which not to
    matmuls = _ops(ctx.baseline_onnx).count("MatMul")
    assert matmuls >= 2
    one = compress(model, Candidate(base_model="m", bits={"up": 4}), ctx, tmp_path / "one")
    assert _ops(one.onnx_path).count("MatMulNBits") == 1
    assert _ops(one.onnx_path).count("MatMul") == matmuls - 1
    # the profile's block size; int8 weight-only is MatMulNBits too, at 8 bits
    q = fast_profile.quantization.model_copy(
        update={"int4_block_size": 16, "int8_format": "weight-only"}
    )
    ctx16 = replace(ctx, profile=fast_profile.model_copy(update={"quantization": q}))
    out = compress(
        model, Candidate(base_model="m", bits={"up": 4, "down": 8}), ctx16, tmp_path / "b"
    )
    nbits = [n for n in onnx.load(str(out.onnx_path)).graph.node if n.op_type == "MatMulNBits"]
    attrs = sorted(
        (a["bits"], a["block_size"])
        for a in ({x.name: onnx.helper.get_attribute_value(x) for x in n.attribute} for n in nbits)
    )
    assert attrs == [(4, 16), (8, 16)]
    assert out.report["quantize"]["int8_engaged"] == 1.0


def _uniform_int8(model, ctx, tmp_path):
    units = discover_units(model, ctx, SpaceSpec())
    bits = {u.path: 8 for u in units if u.knob == "bits" and 8 in u.choices}
    assert bits
    return bits, compress(model, Candidate(base_model="m", bits=bits), ctx, tmp_path / "int8")


def test_int8_engages_on_a_cnn_whose_biases_the_exporter_shares(tiny_ctx, tmp_path) -> None:
    model = models.tiny_resnet()  # fresh BatchNorms fold into equal (zero) biases
    raw = tmp_path / "raw.onnx"
    models.exporter_graph(model, tiny_ctx.example_inputs, raw)
    assert "Identity" in _ops(raw)  # the exporter shares them through Identity nodes
    assert "Identity" not in _ops(tiny_ctx.baseline_onnx)  # tightfit's export inlines them
    bits, out = _uniform_int8(model, tiny_ctx, tmp_path)
    assert out.report["quantize"]["int8_engaged"] == 1.0
    assert out.report["quantize"]["engagement_unchecked"] == 0


def test_a_plan_that_runs_float_is_caught(tiny_ctx, tmp_path) -> None:
    """Quantized from the exporter's raw graph (shared biases), the Convs stay float: the
    check sees it, on ONNX Runtime's optimized graph."""
    from onnxruntime.quantization import quantize_static

    from tightfit.kernels.quantization import _Reader, engagement

    model = models.tiny_resnet()
    raw = tmp_path / "raw.onnx"
    models.exporter_graph(model, tiny_ctx.example_inputs, raw)
    convs = {n.name for n in onnx.load(str(raw)).graph.node if n.op_type in ("Conv", "Gemm")}
    quantized = tmp_path / "q.onnx"
    quantize_static(
        str(raw), str(quantized), _Reader(tiny_ctx.calibration), nodes_to_quantize=sorted(convs)
    )
    found = engagement(raw, quantized, {8: convs, 4: set()}, tiny_ctx)
    assert found.float_nodes and found.report()["int8_engaged"] < 1.0
    assert set(found.float_nodes) <= convs


def test_int8_engages_on_a_bert_style_encoder(tmp_path, fast_profile) -> None:
    model = models.tiny_bert()
    data = load_data(CallableSpec(callable="tests.models:token_id_data"))
    ctx = make_ctx(model, data, fast_profile, tmp_path, classifier=None)
    for fmt in ("static", "dynamic"):
        ctx = replace(ctx, profile=fast_profile.with_int8_format(fmt))
        _, out = _uniform_int8(model, ctx, tmp_path / fmt)
        assert out.report["quantize"]["int8_engaged"] == 1.0, fmt


def test_int8_is_not_offered_where_it_would_not_engage(tiny_ctx, tmp_path, caplog) -> None:
    """Units are discovered on the raw exporter graph (shared biases): the layers whose int8
    would run float there lose the choice, the others keep it."""
    model = models.tiny_resnet()
    raw = tmp_path / "raw.onnx"
    models.exporter_graph(model, tiny_ctx.example_inputs, raw)
    offered = {
        u.path: u.choices
        for u in discover_units(model, replace(tiny_ctx, baseline_onnx=raw), SpaceSpec())
        if u.knob == "bits"
    }
    everywhere = {
        u.path: u.choices for u in discover_units(model, tiny_ctx, SpaceSpec()) if u.knob == "bits"
    }
    assert all(8 in c for c in everywhere.values())
    refused = set(everywhere) - {p for p, c in offered.items() if 8 in c}
    assert refused and refused < set(everywhere)
    assert "int8 not offered" in caplog.text and all(p in caplog.text for p in refused)


def test_the_minmax_grid_keeps_each_blocks_range_and_runs_on_the_fast_kernel(
    tmp_path, fast_profile
) -> None:
    """``int4_grid: minmax`` stores each block as its minimum plus steps (llama.cpp's Q4_1):
    weights already on such a grid come back exactly, where the symmetric grid rounds them.
    ONNX Runtime takes the float zero points this needs only on a slow path: after packing,
    every one is unfolded into the fast symmetric kernel plus a block-sum product, which
    computes the same products (siblings share one block sum)."""
    from onnx import TensorProto, helper, numpy_helper

    from tightfit.kernels.bias_correction import int4_error, minmax_blocks
    from tightfit.kernels.fusion import pack_siblings, unfold_float_zero_points
    from tightfit.kernels.quantization import _quantize_nbits

    rng = np.random.default_rng(0)
    k = 80  # not a multiple of the block: the last block is short

    def on_grid(n: int) -> np.ndarray:
        """Blocks of 32 (the last cut to 16) as ``low + step * code``, codes 0 to 15."""
        codes = rng.integers(0, 16, (3, 32, n))
        codes[:, 0], codes[:, 1] = 0, 15  # each block spans its range
        w = rng.normal(size=(3, 1, n)) + rng.uniform(0.01, 0.1, (3, 1, n)) * codes
        return w.reshape(96, n)[:k].astype(np.float32)

    weights = {"wq": on_grid(24), "wk": on_grid(8)}
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", w], [f"y{w}"], name=w) for w in weights],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "s", k])],
        [helper.make_tensor_value_info(f"y{w}", TensorProto.FLOAT, None) for w in weights],
        [numpy_helper.from_array(a, w) for w, a in weights.items()],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]),
              str(tmp_path / "f.onnx"))  # fmt: skip
    for w in weights.values():
        assert np.abs(int4_error(w, grid="minmax")).max() < 1e-5
        assert np.abs(int4_error(w)).max() > 1e-3  # the symmetric grid does not hold it
    _quantize_nbits(tmp_path / "f.onnx", tmp_path / "q.onnx", None, grid="minmax")
    eye = {"x": np.eye(k, dtype=np.float32)[None]}  # one-hot rows read the weights back
    for path in ("q", "packed", "unfolded", "unfolded8"):
        if path == "packed":
            assert pack_siblings(tmp_path / "q.onnx", tmp_path / "packed.onnx") == 1
        if path.startswith("unfolded"):
            bits = 8 if path == "unfolded8" else 32
            dst = tmp_path / f"{path}.onnx"
            assert unfold_float_zero_points(tmp_path / "packed.onnx", dst, offset_bits=bits) == 1
        got = onnx.load(str(tmp_path / f"{path}.onnx")).graph
        floats = [n for n in got.node if n.op_type == "MatMulNBits" and len(n.input) > 3]
        assert bool(floats) == (not path.startswith("unfolded"))  # no float zero point is left
        stored = _run(tmp_path / f"{path}.onnx", eye)
        for out, (name, w) in zip(stored, weights.items(), strict=True):
            if path != "unfolded8":
                np.testing.assert_allclose(out[0], w, atol=1e-5, err_msg=f"{path}: {name}")
                continue
            # 8-bit offsets (``8 * step + min`` per block and column, one 8-bit block of 16
            # per column here): each rounded by at most half its column's 8-bit step
            _, step, low = minmax_blocks(w, 4, 32)
            offsets = 8 * step + low  # [N, blocks]
            bound = np.abs(offsets).max(axis=1) / 254 + 1e-5
            err = np.abs(out[0] - w)
            assert (err <= bound[None, :]).all(), f"{name}: {err.max()} > {bound.max()}"
            assert err.max() > 1e-6  # they are rounded: this checks the 8-bit path ran
    x = {"x": rng.normal(size=(2, 3, k)).astype(np.float32)}
    for got, want in zip(_run(tmp_path / "unfolded8.onnx", x), (x["x"] @ w for w in weights.values()),
                         strict=True):  # fmt: skip
        assert np.abs(got - want).max() < 0.02 * np.abs(want).max()  # int8 activation blocks
    # the kernel: a profile on the min-max grid is unfolded after compression
    model = models.token_mlp()
    data = load_data(CallableSpec(callable="tests.models:token_data"))
    q = fast_profile.quantization.model_copy(update={"int4_grid": "minmax"})
    ctx = make_ctx(model, data, fast_profile.model_copy(update={"quantization": q}), tmp_path,
                   classifier="head")  # fmt: skip
    out = compress(model, Candidate(base_model="m", bits={"up": 4}), ctx, tmp_path / "c")
    assert out.report["unfolded_zero_points"] == 1
    nbits = [n for n in onnx.load(str(out.onnx_path)).graph.node if n.op_type == "MatMulNBits"]
    bits = sorted(next(a.i for a in n.attribute if a.name == "bits") for n in nbits)
    assert bits == [4, 8]  # the weight; its 8-bit offsets
    assert all(len(n.input) <= 3 for n in nbits)  # no zero point: the fast kernel
