"""Runtimes that run an exported ONNX file: one runner per model, timed the runtime's way.

A runner runs one inference synchronously (``run``) and times a block of inferences
(``block``): on the CPU, host wall time around each run; on a GPU, CUDA events around each
launch (GPU compute time, as trtexec reports it), so host jitter does not enter the numbers.

- ``onnxruntime``: an ``InferenceSession`` with the profile's execution provider (CPU, or CUDA
  with inputs and outputs bound on the device).
- ``torch-cuda``: the ONNX converted to a PyTorch module (onnx2torch) and replayed as a CUDA graph.
  This is the GPU path we can verify without TensorRT or onnxruntime-gpu.
- ``tensorrt``: an engine built from the ONNX with a static optimization profile (the profile's
  shapes) and a persistent timing cache per (GPU, TensorRT version). Written to TensorRT's
  documented Python API (10.x and 11.x); precision comes from the ONNX (Q/DQ, fp16), as
  strongly typed networks require. Optional: detected at run time.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from tightfit._machine import cpu_environment, gpu_environment
from tightfit.exceptions import ConfigError
from tightfit.hardware_profiles import HardwareProfile


class Runner(Protocol):
    def run(self) -> None: ...

    def block(self, iters: int) -> np.ndarray:
        """Milliseconds of each of ``iters`` consecutive inferences."""
        ...


def open_runner(path: Path, profile: HardwareProfile, feed: dict[str, np.ndarray]) -> Runner:
    """A runner for the ONNX file at ``path`` on ``profile``'s runtime."""
    if profile.runtime == "onnxruntime":
        if profile.execution_provider == "CPUExecutionProvider":
            return OrtCpuRunner(path, profile, feed)
        return OrtDeviceRunner(path, profile, feed)
    if profile.runtime == "torch-cuda":
        return TorchCudaRunner(path, profile, feed)
    if profile.runtime == "tensorrt":
        return TensorRTRunner(path, profile, feed)
    raise ConfigError(f"hardware profile '{profile.name}': unknown runtime '{profile.runtime}'")


def require_runtime(profile: HardwareProfile) -> None:
    """Raise a clear error if this machine cannot run ``profile`` (missing library or GPU)."""
    if not profile.is_gpu:
        return
    missing = runtime_missing(profile)
    if missing:
        raise ConfigError(f"hardware profile '{profile.name}' cannot run here: {missing}")


def runtime_missing(profile: HardwareProfile) -> str | None:
    """Why ``profile`` cannot run on this machine, or None if it can."""
    if profile.runtime == "onnxruntime":
        import onnxruntime as ort

        if profile.execution_provider not in ort.get_available_providers():
            return (
                f"onnxruntime {ort.__version__} here offers {ort.get_available_providers()}, not "
                f"{profile.execution_provider}; install onnxruntime-gpu"
            )
        return None
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a core dependency
        return "PyTorch is not installed"
    if not torch.cuda.is_available():
        return "no CUDA GPU is visible to PyTorch"
    if profile.runtime == "torch-cuda":
        try:
            import onnx2torch  # noqa: F401
        except ImportError:
            return "the torch-cuda runtime needs onnx2torch: pip install 'tightfit[gpu]'"
    if profile.runtime == "tensorrt":
        try:
            import tensorrt  # noqa: F401
        except ImportError:
            return "TensorRT is not installed (pip install tensorrt, from NVIDIA's index)"
    return None


# ---- CPU ------------------------------------------------------------------------------------
class OrtCpuRunner:
    def __init__(self, path: Path, profile: HardwareProfile, feed: dict[str, np.ndarray]) -> None:
        from tightfit._ort import make_session

        self.session = make_session(path, profile)
        self.feed = feed

    def run(self) -> None:
        self.session.run(None, self.feed)

    def block(self, iters: int) -> np.ndarray:
        return host_timed_block(self.run, iters)


def host_timed_block(run: Callable[[], None], iters: int) -> np.ndarray:
    """Milliseconds of each of ``iters`` synchronous calls of ``run``, by the host clock."""
    times = np.empty(iters)
    for i in range(iters):
        t0 = time.perf_counter_ns()
        run()
        times[i] = time.perf_counter_ns() - t0
    return times / 1e6


@contextmanager
def pinned(profile: HardwareProfile) -> Iterator[list[int] | None]:
    """Pin this thread (and the runtime threads it creates) to ``intra_op_threads`` CPUs.

    Linux only; the CPUs are the first ones this process may use. Threads created inside the
    block (ONNX Runtime's pool) inherit the mask. Yields the CPUs, or None where not pinned.
    """
    if (
        profile.is_gpu
        or not profile.measurement.pin_threads
        or not hasattr(os, "sched_setaffinity")
    ):
        yield None
        return
    allowed = sorted(os.sched_getaffinity(0))
    cpus = allowed[: profile.intra_op_threads]
    os.sched_setaffinity(0, cpus)
    try:
        yield cpus
    finally:
        os.sched_setaffinity(0, allowed)


# ---- GPU: shared helpers --------------------------------------------------------------------
class _CudaEventTimer:
    """Times launches with CUDA events; one synchronisation per block."""

    def __init__(self, launch: Any) -> None:
        import torch

        self.torch = torch
        self.launch = launch

    def block(self, iters: int) -> np.ndarray:
        torch = self.torch
        events = [
            (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
            for _ in range(iters)
        ]
        for start, end in events:
            start.record()
            self.launch()
            end.record()
        torch.cuda.synchronize()
        return np.array([s.elapsed_time(e) for s, e in events])


def _torch_inputs(feed: dict[str, np.ndarray]) -> dict[str, Any]:
    import torch

    return {k: torch.from_numpy(np.ascontiguousarray(v)).cuda() for k, v in feed.items()}


# ---- GPU: ONNX Runtime with a device execution provider ---------------------------------------
class OrtDeviceRunner:
    """ONNX Runtime on a GPU provider; inputs and outputs stay on the device (I/O binding)."""

    def __init__(self, path: Path, profile: HardwareProfile, feed: dict[str, np.ndarray]) -> None:
        import onnxruntime as ort

        from tightfit._ort import make_session

        require_runtime(profile)
        self.session = make_session(path, profile)
        self.binding = self.session.io_binding()
        for name, value in feed.items():
            self.binding.bind_ortvalue_input(
                name, ort.OrtValue.ortvalue_from_numpy(value, "cuda", 0)
            )
        for out in self.session.get_outputs():
            self.binding.bind_output(out.name, "cuda", 0)

    def run(self) -> None:
        self.session.run_with_iobinding(self.binding)
        self.binding.synchronize_outputs()

    def block(self, iters: int) -> np.ndarray:
        return host_timed_block(self.run, iters)


# ---- GPU: PyTorch CUDA graphs -----------------------------------------------------------------
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


class TorchCudaRunner:
    """The ONNX as a PyTorch module on the GPU, captured once and replayed as a CUDA graph."""

    def __init__(self, path: Path, profile: HardwareProfile, feed: dict[str, np.ndarray]) -> None:
        require_runtime(profile)
        import onnx
        import torch
        from onnx2torch import convert

        self.module = convert(_initializers_inlined(onnx.load(str(path)))).cuda().eval()
        self.inputs = _torch_inputs(feed)
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
            self.launch = graph.replay
        except RuntimeError as e:  # an op that syncs with the host cannot be captured
            torch.cuda.synchronize()
            self.timing = f"eager launches, CUDA events (graph capture failed: {str(e)[:200]})"

            def eager() -> None:
                with torch.no_grad():
                    self.out = self.module(*args)

            self.launch = eager
        torch.cuda.synchronize()
        self.timer = _CudaEventTimer(self.launch)

    def run(self) -> None:
        import torch

        self.launch()
        torch.cuda.synchronize()

    def block(self, iters: int) -> np.ndarray:
        return self.timer.block(iters)


# ---- GPU: TensorRT ----------------------------------------------------------------------------
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
    require_runtime(profile)
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
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache_file.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_bytes(memoryview(config.get_timing_cache().serialize()))
    tmp.replace(cache_file)
    return bytes(plan)


class TensorRTRunner:
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
        self.buffers: dict[str, Any] = _torch_inputs(feed)
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
        self.timer = _CudaEventTimer(self._launch)

    def _launch(self) -> None:
        import torch

        with torch.cuda.stream(self.stream):
            self.context.execute_async_v3(self.stream.cuda_stream)

    def run(self) -> None:
        self._launch()
        self.stream.synchronize()

    def block(self, iters: int) -> np.ndarray:
        import torch

        with torch.cuda.stream(self.stream):
            return self.timer.block(iters)


def environment(profile: HardwareProfile, feed: dict[str, np.ndarray]) -> dict[str, str]:
    """Everything a latency number depends on besides the model: hardware, runtime, settings."""
    import onnxruntime

    env = {
        **cpu_environment(),
        "runtime": profile.runtime,
        "onnxruntime": onnxruntime.__version__,
        "execution_provider": profile.execution_provider,
        "intra_op_threads": str(profile.intra_op_threads),
        "inter_op_threads": str(profile.inter_op_threads),
        "session_options": "sequential,spinning=off,graph_opt=all",
        "batch_size": str(profile.batch_size),
        "float_precision": profile.float_precision,
        "shapes": ";".join(f"{k}={'x'.join(map(str, v.shape))}" for k, v in sorted(feed.items())),
    }
    if profile.is_gpu:
        env.update(gpu_environment())
        import torch

        env["torch"] = torch.__version__
        if profile.runtime == "tensorrt":
            import tensorrt as trt

            env["tensorrt"] = trt.__version__
    return env
