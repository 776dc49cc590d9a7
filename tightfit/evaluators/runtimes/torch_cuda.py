"""``torch-cuda``: the ONNX converted to a PyTorch module (onnx2torch) and replayed as a CUDA
graph. The GPU path we can verify without TensorRT or onnxruntime-gpu."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from tightfit.evaluators.runtimes._base import (
    CudaRunner,
    CudaRuntime,
    require,
    torch_inputs,
)
from tightfit.hardware_profiles import HardwareProfile


def _initializers_inlined(model: Any) -> Any:
    """Replace ``Identity(initializer)`` nodes by a copy of the initializer (in place).

    The TorchScript exporter shares equal weights (e.g. all-zero biases) through Identity nodes;
    onnx2torch wants a Conv's weights and bias to be initializers.
    """
    import onnx

    inits = {i.name: i for i in model.graph.initializer}
    kept = []
    for node in model.graph.node:
        if node.op_type == "Identity" and node.input[0] in inits:
            copy = onnx.TensorProto()
            copy.CopyFrom(inits[node.input[0]])
            copy.name = node.output[0]
            model.graph.initializer.append(copy)
            inits[copy.name] = copy
        else:
            kept.append(node)
    del model.graph.node[:]
    model.graph.node.extend(kept)
    return model


class TorchCudaRunner(CudaRunner):
    """The ONNX as a PyTorch module on the GPU, captured once and replayed as a CUDA graph."""

    def __init__(self, path: Path, profile: HardwareProfile, feed: dict[str, np.ndarray]) -> None:
        require(RUNTIME, profile)
        import onnx
        import torch
        from onnx2torch import convert

        self.module = convert(_initializers_inlined(onnx.load(str(path)))).cuda().eval()
        self.inputs = torch_inputs(feed)
        args = [self.inputs[k] for k in feed]
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.no_grad(), torch.cuda.stream(stream):
            for _ in range(3):  # warm the allocator and cuDNN autotuning before capture
                self.module(*args)
        torch.cuda.current_stream().wait_stream(stream)
        self.timing = "cuda graph replay, CUDA events"
        try:
            graph = torch.cuda.CUDAGraph()
            with torch.no_grad(), torch.cuda.graph(graph):
                self.out = self.module(*args)
            self._launch = graph.replay
        except RuntimeError as e:  # an op that syncs with the host cannot be captured
            torch.cuda.synchronize()
            self.timing = f"eager launches, CUDA events (graph capture failed: {str(e)[:200]})"

            def eager() -> None:
                with torch.no_grad():
                    self.out = self.module(*args)

            self._launch = eager
        torch.cuda.synchronize()

    def launch(self) -> None:
        self._launch()


class TorchCuda(CudaRuntime):
    package = "onnx2torch"
    install = "the torch-cuda runtime needs onnx2torch: pip install 'tightfit[gpu]'"
    runner = TorchCudaRunner


RUNTIME = TorchCuda()
