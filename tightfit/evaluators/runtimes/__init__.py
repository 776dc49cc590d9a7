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

import importlib
from functools import cache
from pathlib import Path

import numpy as np

from tightfit._machine import cpu_environment, gpu_environment
from tightfit.evaluators.runtimes._base import Runner, Runtime, host_timed_block, pinned, require
from tightfit.exceptions import ConfigError
from tightfit.hardware_profiles import RUNTIMES, HardwareProfile

__all__ = [
    "Runner",
    "Runtime",
    "environment",
    "get_runtime",
    "host_timed_block",
    "open_runner",
    "pinned",
    "require_runtime",
    "runtime_missing",
]


@cache
def get_runtime(name: str) -> Runtime:
    """The implementation of the runtime ``name`` (``hardware_profiles.RUNTIMES`` names its
    module here)."""
    spec = RUNTIMES.get(name)
    if spec is None:
        raise ConfigError(f"unknown runtime '{name}' (valid: {', '.join(RUNTIMES)})")
    runtime: Runtime = importlib.import_module(f"{__name__}.{spec.module}").RUNTIME
    return runtime


def open_runner(path: Path, profile: HardwareProfile, feed: dict[str, np.ndarray]) -> Runner:
    """A runner for the ONNX file at ``path`` on ``profile``'s runtime."""
    return get_runtime(profile.runtime).open(path, profile, feed)


def runtime_missing(profile: HardwareProfile) -> str | None:
    """Why ``profile`` cannot run on this machine, or None if it can."""
    return get_runtime(profile.runtime).missing(profile)


def require_runtime(profile: HardwareProfile) -> None:
    """Raise a clear error if this machine cannot run ``profile`` (missing library or GPU)."""
    if profile.is_gpu:
        require(get_runtime(profile.runtime), profile)


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
        "session_options": (
            f"sequential,spinning={'on' if profile.thread_spinning else 'off'},graph_opt=all"
        ),
        "batch_size": str(profile.batch_size),
        "float_precision": profile.float_precision,
        "shapes": ";".join(f"{k}={'x'.join(map(str, v.shape))}" for k, v in sorted(feed.items())),
    }
    if profile.is_gpu:
        env.update(gpu_environment())
    env.update(get_runtime(profile.runtime).environment(profile))
    return env
