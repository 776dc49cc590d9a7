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
    from onnxruntime.transformers.onnx_model import OnnxModel

    model = onnx.load(str(src))
    converted = convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=False)
    # the converter appends its input Casts at the end; ONNX requires producers first (the
    # checker, onnx2torch and TensorRT's parser rely on it): the same package's sort
    OnnxModel(converted).topological_sort(is_deterministic=True)
    onnx.checker.check_model(converted)
    onnx.save(converted, str(dst))
    return dst
