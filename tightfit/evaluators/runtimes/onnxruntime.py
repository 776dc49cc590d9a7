"""ONNX Runtime: an ``InferenceSession`` with the profile's execution provider (CPU, or CUDA
with inputs and outputs bound on the device)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from tightfit._ort import PAST, cache_layout, make_session, step_feed
from tightfit.evaluators.runtimes._base import Runner, host_timed_block, require
from tightfit.hardware_profiles import HardwareProfile


class OnnxRuntime:
    def missing(self, profile: HardwareProfile) -> str | None:
        import onnxruntime as ort

        if profile.execution_provider not in ort.get_available_providers():
            return (
                f"onnxruntime {ort.__version__} here offers {ort.get_available_providers()}, not "
                f"{profile.execution_provider}; install onnxruntime-gpu in its place (pip uninstall "
                "-y onnxruntime && pip install 'onnxruntime-gpu>=1.31,<1.33')"
            )
        return None

    def open(self, path: Path, profile: HardwareProfile, feed: dict[str, np.ndarray]) -> Runner:
        if profile.generation is not None:
            return OrtGenerationRunner(path, profile, feed)
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


class OrtGenerationRunner:
    """One greedy generation per inference (``profile.generation``): the prefill of the prompt
    with an empty KV cache, then ``new_tokens - 1`` decode steps, each fed the token the last
    one chose and the cache it returned. ``block`` gives each generation's decode time per
    token or its whole time (``generation.latency``) and keeps all three in ``phases``.

    The cache goes back and forth as numpy arrays, as a plain ``InferenceSession`` loop does
    (onnxruntime-genai's own generator shares one preallocated buffer between steps instead):
    every candidate and the baseline pay the same copies. Graphs that also take an
    ``attention_mask`` or ``position_ids`` (onnxruntime-genai's builder writes the mask) are
    fed them.
    """

    def __init__(self, path: Path, profile: HardwareProfile, feed: dict[str, np.ndarray]) -> None:
        assert profile.generation is not None
        self.session = make_session(path, profile)
        self.layout = cache_layout(self.session)
        if not self.layout or "input_ids" not in feed:
            raise ValueError(f"{path} is no KV-cache graph fed input_ids (a generation profile)")
        self.takes = {i.name for i in self.session.get_inputs()}
        self.prompt = feed["input_ids"]
        self.steps = profile.generation.new_tokens - 1
        self.latency = profile.generation.latency
        outputs = [o.name for o in self.session.get_outputs()]
        self.cache_names = [n.replace("present.", PAST, 1) for n in outputs[1:]]
        self.phases: dict[str, list[float]] = {
            "prefill_ms": [], "decode_ms_per_token": [], "end_to_end_ms": []
        }  # fmt: skip

    def generate(self, prompt: np.ndarray | None = None) -> tuple[float, float, np.ndarray]:
        """One greedy generation from ``prompt`` (default: the feed's): (prefill ms, total
        decode ms, the new tokens ``(batch, new_tokens)``)."""
        ids = self.prompt if prompt is None else prompt
        tokens = []
        t0 = time.perf_counter_ns()
        out = self.session.run(None, step_feed({"input_ids": ids}, {}, self.layout, self.takes))
        t1 = time.perf_counter_ns()
        for _ in range(self.steps):
            tokens.append(out[0][:, -1].argmax(-1)[:, None].astype(np.int64))
            cache = dict(zip(self.cache_names, out[1:], strict=True))
            feed = step_feed({"input_ids": tokens[-1]}, cache, self.layout, self.takes)
            out = self.session.run(None, feed)
        t2 = time.perf_counter_ns()
        tokens.append(out[0][:, -1].argmax(-1)[:, None].astype(np.int64))
        return (t1 - t0) / 1e6, (t2 - t1) / 1e6, np.concatenate(tokens, axis=1)

    def run(self) -> None:
        self.generate()

    def block(self, iters: int) -> np.ndarray:
        times = np.empty(iters)
        for i in range(iters):
            prefill, decode, _ = self.generate()
            per_token = decode / self.steps
            self.phases["prefill_ms"].append(prefill)
            self.phases["decode_ms_per_token"].append(per_token)
            self.phases["end_to_end_ms"].append(prefill + decode)
            times[i] = per_token if self.latency == "decode_ms_per_token" else prefill + decode
        return times
