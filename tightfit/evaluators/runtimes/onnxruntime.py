"""ONNX Runtime: an ``InferenceSession`` with the profile's execution provider (CPU, or CUDA
with inputs and outputs bound on the device)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tightfit._ort import make_session
from tightfit.evaluators.runtimes._base import Runner, host_timed_block, require
from tightfit.hardware_profiles import HardwareProfile


class OnnxRuntime:
    def missing(self, profile: HardwareProfile) -> str | None:
        import onnxruntime as ort

        if profile.execution_provider not in ort.get_available_providers():
            return (
                f"onnxruntime {ort.__version__} here offers {ort.get_available_providers()}, not "
                f"{profile.execution_provider}; install onnxruntime-gpu in its place (pip uninstall "
                "-y onnxruntime && pip install 'onnxruntime-gpu>=1.20,<1.33')"
            )
        return None

    def open(self, path: Path, profile: HardwareProfile, feed: dict[str, np.ndarray]) -> Runner:
        if profile.execution_provider == "CPUExecutionProvider":
            return OrtCpuRunner(path, profile, feed)
        return OrtDeviceRunner(path, profile, feed)

    def environment(self, profile: HardwareProfile) -> dict[str, str]:
        return {}  # ONNX Runtime's version is in every environment (the export's checks use it)


RUNTIME = OnnxRuntime()


class OrtCpuRunner:
    def __init__(self, path: Path, profile: HardwareProfile, feed: dict[str, np.ndarray]) -> None:
        self.session = make_session(path, profile)
        self.feed = feed

    def run(self) -> None:
        self.session.run(None, self.feed)

    def block(self, iters: int) -> np.ndarray:
        return host_timed_block(self.run, iters)


class OrtDeviceRunner:
    """ONNX Runtime on a GPU provider; inputs and outputs stay on the device (I/O binding)."""

    def __init__(self, path: Path, profile: HardwareProfile, feed: dict[str, np.ndarray]) -> None:
        import onnxruntime as ort

        require(RUNTIME, profile)
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
