"""What every runtime provides, and the helpers they share.

A runtime module (``onnxruntime``, ``torch_cuda``, ``tensorrt``) holds one ``RUNTIME`` object
with ``missing(profile)`` (why this machine cannot run it, or None), ``open(path, profile,
feed)`` (a :class:`Runner`) and ``environment(profile)`` (what a latency on it depends on).
"""

from __future__ import annotations

import importlib
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from tightfit.exceptions import ConfigError
from tightfit.hardware_profiles import HardwareProfile


class Runner(Protocol):
    def run(self) -> None: ...

    def block(self, iters: int) -> np.ndarray:
        """Milliseconds of each of ``iters`` consecutive inferences."""
        ...


class Runtime(Protocol):
    def missing(self, profile: HardwareProfile) -> str | None:
        """Why ``profile`` cannot run on this machine, or None if it can."""
        ...

    def open(self, path: Path, profile: HardwareProfile, feed: dict[str, np.ndarray]) -> Runner:
        """A runner of the ONNX file at ``path``, fed ``feed``."""
        ...

    def environment(self, profile: HardwareProfile) -> dict[str, str]:
        """This runtime's versions and settings, for a latency's environment."""
        ...


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


def require(runtime: Runtime, profile: HardwareProfile) -> None:
    """ConfigError, naming the profile, if ``runtime`` cannot run ``profile`` here."""
    missing = runtime.missing(profile)
    if missing:
        raise ConfigError(f"hardware profile '{profile.name}' cannot run here: {missing}")


class CudaRuntime:
    """A runtime on a CUDA GPU, driven through PyTorch's CUDA, that needs one more package."""

    package: str = ""  # imported to check it is there
    install: str = ""  # what to say when it is not
    runner: Callable[[Path, HardwareProfile, dict[str, np.ndarray]], Runner]

    def open(self, path: Path, profile: HardwareProfile, feed: dict[str, np.ndarray]) -> Runner:
        return type(self).runner(path, profile, feed)

    def missing(self, profile: HardwareProfile) -> str | None:
        try:
            import torch
        except ImportError:  # pragma: no cover - torch is a core dependency
            return "PyTorch is not installed"
        if not torch.cuda.is_available():
            return "no CUDA GPU is visible to PyTorch"
        try:
            importlib.import_module(self.package)
        except ImportError:
            return self.install
        return None

    def environment(self, profile: HardwareProfile) -> dict[str, str]:
        import torch

        version = getattr(importlib.import_module(self.package), "__version__", "")
        return {"torch": torch.__version__, self.package: str(version)}


class CudaRunner:
    """A runner whose ``launch`` enqueues one inference on ``stream`` (None: the current
    stream), timed with CUDA events around each launch: GPU time, one synchronisation per
    block, so host jitter does not enter the numbers."""

    stream: Any = None

    def launch(self) -> None:
        raise NotImplementedError

    def run(self) -> None:
        import torch

        with torch.cuda.stream(self.stream):  # a no-op context for None
            self.launch()
        torch.cuda.synchronize()

    def block(self, iters: int) -> np.ndarray:
        import torch

        with torch.cuda.stream(self.stream):
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


def torch_inputs(feed: dict[str, np.ndarray]) -> dict[str, Any]:
    import torch

    return {k: torch.from_numpy(np.ascontiguousarray(v)).cuda() for k, v in feed.items()}
