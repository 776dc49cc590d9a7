from __future__ import annotations

import numpy as np
import onnx
import torch

from tests import models
from tests.conftest import make_ctx
from tightfit.config import CallableSpec, SpaceSpec
from tightfit.evaluators import predict
from tightfit.kernels import compress
from tightfit.spaces import Candidate, discover_units
from tightfit.task import TaskData, load_data


def _ops(path) -> list[str]:
    return [n.op_type for n in onnx.load(str(path)).graph.node]


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
