"""The runtimes a profile can name, and what each can run: the registry of runtimes.

A line per runtime: its name, what it needs and runs (a GPU, quantized graphs, ONNX Runtime's
dynamic int8), and the module that implements it (``evaluators.runtimes.<module>``, providing
``missing``, ``open`` and ``environment``). Adding a runtime is that module and one line here;
profiles are validated against the line, and the evaluators load the module by its name.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RuntimeSpec:
    name: str
    module: str  # tightfit.evaluators.runtimes.<module>
    gpu: bool | None  # needs device: cuda (None: as its execution provider says)
    quantized: bool = True  # runs int8/int4 graphs
    dynamic_int8: bool = False  # runs dynamic int8 (ONNX Runtime's MatMulInteger)
    doc: str = ""


RUNTIMES: dict[str, RuntimeSpec] = {
    r.name: r
    for r in (
        RuntimeSpec(
            "onnxruntime",
            "onnxruntime",
            gpu=None,
            dynamic_int8=True,
            doc="ONNX Runtime with the profile's execution provider (CPU, or CUDA)",
        ),
        RuntimeSpec(
            "tensorrt",
            "tensorrt",
            gpu=True,
            doc="a TensorRT engine built from the ONNX (static Q/DQ int8, fp16)",
        ),
        RuntimeSpec(
            "torch-cuda",
            "torch_cuda",
            gpu=True,
            quantized=False,
            doc="the ONNX as a PyTorch module replayed as a CUDA graph (float graphs only)",
        ),
    )
}
