"""fp16 export on any machine: ONNX Runtime's converter, then producers before consumers."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import torch

from tests import models
from tightfit.kernels import export_onnx
from tightfit.kernels.precision import to_float16


def test_fp16_graph_is_ordered_checked_and_close(tmp_path) -> None:
    model = models.tiny_resnet().eval()
    x = torch.randn(2, 1, 16, 16)
    src = export_onnx(model, (x,), ("image",), tmp_path / "m.onnx")
    dst = to_float16(src, tmp_path / "m16.onnx")
    graph = onnx.load(str(dst)).graph
    onnx.checker.check_model(onnx.load(str(dst)))  # ordered: the checker refuses otherwise
    seen = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    for node in graph.node:
        assert all(i in seen for i in node.input), node.name
        seen.update(node.output)
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in graph.initializer)
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # io kept fp32
    feed = {"image": x.numpy()}
    a = ort.InferenceSession(str(src)).run(None, feed)[0]
    b = ort.InferenceSession(str(dst)).run(None, feed)[0]
    assert np.allclose(a, b, atol=1e-2)
