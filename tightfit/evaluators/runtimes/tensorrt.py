"""``tensorrt``: an engine built from the ONNX with a static optimization profile (the profile's
shapes) and a persistent timing cache per (GPU, TensorRT version). Written to TensorRT's
documented Python API (10.x and 11.x); precision comes from the ONNX (Q/DQ, fp16), as strongly
typed networks require. Optional: detected at run time."""

from __future__ import annotations

import hashlib
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
from tightfit.workdir import atomic_write


def timing_cache_path(gpu: str, trt_version: str) -> Path:
    root = Path(os.environ.get("TIGHTFIT_CACHE_DIR", Path.home() / ".cache" / "tightfit"))
    key = hashlib.sha256(f"{gpu}|{trt_version}".encode()).hexdigest()[:16]
    return root / "tensorrt" / f"timing-{key}.cache"


def build_engine(path: Path, profile: HardwareProfile, feed: dict[str, np.ndarray]) -> bytes:
    """A serialized TensorRT engine (plan) for the ONNX at ``path``, static shapes from ``feed``.

    TensorRT 10: the network is created STRONGLY_TYPED (precision from the ONNX); TensorRT 11
    networks are always strongly typed and the flag is gone. The timing cache for this GPU and
    TensorRT version is loaded before and saved after the build.
    """
    require(RUNTIME, profile)
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.ERROR)
    builder = trt.Builder(logger)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):  # TensorRT 10.x
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT cannot parse {path.name}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, 4 << 30)
    config.builder_optimization_level = 3
    opt = builder.create_optimization_profile()
    for name, value in feed.items():
        opt.set_shape(name, value.shape, value.shape, value.shape)  # min = opt = max
    config.add_optimization_profile(opt)
    cache_file = timing_cache_path(gpu_environment().get("gpu", "unknown"), trt.__version__)
    previous = cache_file.read_bytes() if cache_file.exists() else b""
    timing_cache = config.create_timing_cache(previous)
    config.set_timing_cache(timing_cache, ignore_mismatch=False)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError(f"TensorRT could not build an engine for {path.name}")
    atomic_write(cache_file, bytes(memoryview(config.get_timing_cache().serialize())))
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


RUNTIME = TensorRT()
