"""``tensorrt``: an engine built from the ONNX through Polygraphy with a static optimization
profile (the profile's shapes) and a persistent timing cache per (GPU, TensorRT version), run
with TensorRT's ``execute_async_v3`` on a torch stream and timed with CUDA events (Polygraphy's
``TrtRunner`` adds host-side copies and bookkeeping to every call, which the latency would
carry). Precision comes from the ONNX (Q/DQ, fp16), as strongly typed networks require.
Optional: detected at run time."""

from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path
from typing import Any

import numpy as np

from tightfit._machine import gpu_environment
from tightfit.evaluators.runtimes._base import (
    CudaRunner,
    CudaRuntime,
    require,
    torch_inputs,
)
from tightfit.hardware_profiles import HardwareProfile


def timing_cache_path(gpu: str, trt_version: str) -> Path:
    root = Path(os.environ.get("TIGHTFIT_CACHE_DIR", Path.home() / ".cache" / "tightfit"))
    key = hashlib.sha256(f"{gpu}|{trt_version}".encode()).hexdigest()[:16]
    return root / "tensorrt" / f"timing-{key}.cache"


def build_engine(path: Path, profile: HardwareProfile, feed: dict[str, np.ndarray]) -> bytes:
    """A serialized TensorRT engine (plan) for the ONNX at ``path``, static shapes from ``feed``.

    Built through Polygraphy, NVIDIA's own layer over TensorRT (tested against each TensorRT
    release): the network parsed strongly typed (precision from the ONNX: its Q/DQ and fp16),
    one optimization profile with min = opt = max = the feed's shapes, a 4 GiB workspace,
    builder optimization level 3, and the timing cache of this GPU and TensorRT version loaded
    before and saved after the build (Polygraphy appends to it under a file lock, so searches
    building at once on one machine do not lose each other's tactics).
    """
    require(RUNTIME, profile)
    import tensorrt as trt
    from polygraphy.backend.trt import (
        CreateConfig,
        EngineBytesFromNetwork,
        NetworkFromOnnxBytes,
        Profile,
    )

    shapes = Profile()
    for name, value in feed.items():
        shapes.add(name, min=value.shape, opt=value.shape, max=value.shape)
    cache_file = timing_cache_path(gpu_environment().get("gpu", "unknown"), trt.__version__)
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    config = CreateConfig(
        profiles=[shapes],
        load_timing_cache=str(cache_file) if cache_file.exists() else None,
        memory_pool_limits={trt.MemoryPoolType.WORKSPACE: 4 << 30},
        builder_optimization_level=3,
    )
    network = NetworkFromOnnxBytes(path.read_bytes(), strongly_typed=True)
    try:
        plan = EngineBytesFromNetwork(network, config=config, save_timing_cache=str(cache_file))()
    except Exception as e:  # Polygraphy reports a parse or build failure as an exception
        raise RuntimeError(f"TensorRT could not build an engine for {path.name}: {e}") from e
    return bytes(plan)


class TensorRTRunner(CudaRunner):
    """A TensorRT engine built from the ONNX, run with ``execute_async_v3`` on a torch stream."""

    def __init__(
        self,
        path: Path,
        profile: HardwareProfile,
        feed: dict[str, np.ndarray],
        plan: bytes | None = None,
    ) -> None:
        import tensorrt as trt
        import torch

        self.plan = plan if plan is not None else build_engine(path, profile, feed)
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.ERROR))
        self.engine = self.runtime.deserialize_cuda_engine(self.plan)
        self.context = self.engine.create_execution_context()
        self.stream = torch.cuda.Stream()
        self.buffers: dict[str, Any] = torch_inputs(feed)
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            if self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                self.context.set_input_shape(name, tuple(self.buffers[name].shape))
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            if name not in self.buffers:
                shape = tuple(self.context.get_tensor_shape(name))
                dtype = torch.from_numpy(
                    np.empty(0, dtype=trt.nptype(self.engine.get_tensor_dtype(name)))
                ).dtype
                self.buffers[name] = torch.empty(shape, dtype=dtype, device="cuda")
            self.context.set_tensor_address(name, self.buffers[name].data_ptr())

    def launch(self) -> None:
        self.context.execute_async_v3(self.stream.cuda_stream)


class TensorRT(CudaRuntime):
    package = "tensorrt"
    install = "TensorRT is not installed: pip install 'tightfit[tensorrt]' (its wheels are on PyPI)"
    runner = TensorRTRunner

    def missing(self, profile: HardwareProfile) -> str | None:
        found = super().missing(profile)
        if found is None and importlib.util.find_spec("polygraphy") is None:
            return "Polygraphy is not installed: pip install 'tightfit[tensorrt]'"
        return found


RUNTIME = TensorRT()
