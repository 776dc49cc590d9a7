"""The float precision of the exported graph: fp16 for targets that run fp16 (GPUs).

Done on the ONNX, after every other kernel, with ONNX Runtime's own converter (the library
keeps ops without fp16 kernels in fp32 behind Casts); inputs and outputs stay fp32 so callers
feed the same data. TensorRT 10/11 strongly typed networks take their precision from exactly
this graph.
"""

from __future__ import annotations

from pathlib import Path

import onnx


def to_float16(src: Path, dst: Path) -> Path:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(src))
    converted = convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=False)
    topological_sort(converted.graph)  # the converter appends its input Casts at the end
    onnx.checker.check_model(converted)
    onnx.save(converted, str(dst))
    return dst


def topological_sort(graph: onnx.GraphProto) -> None:
    """Order ``graph.node`` so every node comes after the producers of its inputs (in place).

    ONNX requires this order (the checker, onnx2torch and TensorRT's parser rely on it). Nodes
    are taken level by level, keeping their relative order within a level. Graphs with control
    flow subgraphs that read outer names are not handled (exported CNNs and encoders have none).
    """
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending = list(graph.node)
    ordered: list[onnx.NodeProto] = []
    while pending:
        ready = [n for n in pending if all(i in available for i in n.input)]
        if not ready:
            raise ValueError(f"graph has a cycle or a missing input near node {pending[0].name!r}")
        ready_ids = {id(n) for n in ready}
        for n in ready:
            ordered.append(n)
            available.update(n.output)
        pending = [n for n in pending if id(n) not in ready_ids]
    copies = [onnx.NodeProto.FromString(n.SerializeToString()) for n in ordered]
    del graph.node[:]
    graph.node.extend(copies)
