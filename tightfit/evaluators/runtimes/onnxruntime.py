"""ONNX Runtime: an ``InferenceSession`` with the profile's execution provider (CPU, or CUDA
with inputs and outputs bound on the device)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from tightfit._ort import MASK, PAST, cache_layout, make_session, shares_cache_buffer, step_feed
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
    one chose and the cache so far. ``block`` gives each generation's decode time per token or
    its whole time (``generation.latency``) and keeps all three in ``phases``.

    The cache is kept the way the graph allows (``cache_buffer``):

    - ``shared``, a graph whose cache only ``GroupQueryAttention`` reads and whose lengths come
      from an ``attention_mask`` (tightfit's packed decoder graphs, onnxruntime-genai's
      builder's; ``_ort.shares_cache_buffer``): one preallocated buffer per cache tensor, as
      long as the whole generation, bound as both the past input and the present output (I/O
      binding), as onnxruntime-genai's generator runs them. The operator appends the new
      positions in place.
    - ``copied``, any other (the plain export, whose attention concatenates): the present cache
      comes back as numpy arrays and is fed as the next step's past, as a plain
      ``InferenceSession`` loop does.

    Graphs that also take an ``attention_mask`` or ``position_ids`` are fed them.
    """

    def __init__(self, path: Path, profile: HardwareProfile, feed: dict[str, np.ndarray]) -> None:
        import onnx

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
        self.logits = outputs[0]
        self.cache_names = [n.replace("present.", PAST, 1) for n in outputs[1:]]
        self.presents = dict(zip(self.cache_names, outputs[1:], strict=True))
        self.dtypes = {
            i.name: np.float16 if i.type == "tensor(float16)" else np.float32
            for i in self.session.get_inputs()
            if i.name in self.layout
        }  # fmt: skip
        graph = onnx.load(str(path), load_external_data=False).graph
        self.cache_buffer = "shared" if shares_cache_buffer(graph) else "copied"
        self.phases: dict[str, list[float]] = {
            "prefill_ms": [], "decode_ms_per_token": [], "end_to_end_ms": []
        }  # fmt: skip

    def generate(self, prompt: np.ndarray | None = None) -> tuple[float, float, np.ndarray]:
        """One greedy generation from ``prompt`` (default: the feed's): (prefill ms, total
        decode ms, the new tokens ``(batch, new_tokens)``)."""
        ids = self.prompt if prompt is None else prompt
        step = self._shared_steps(ids) if self.cache_buffer == "shared" else self._copied_steps()
        tokens = []
        t0 = time.perf_counter_ns()
        logits = step(ids)
        t1 = time.perf_counter_ns()
        for _ in range(self.steps):
            tokens.append(logits[:, -1].argmax(-1)[:, None].astype(np.int64))
            logits = step(tokens[-1])
        t2 = time.perf_counter_ns()
        tokens.append(logits[:, -1].argmax(-1)[:, None].astype(np.int64))
        return (t1 - t0) / 1e6, (t2 - t1) / 1e6, np.concatenate(tokens, axis=1)

    def _copied_steps(self) -> Callable[[np.ndarray], np.ndarray]:
        """A step function: new tokens -> logits, the cache fed back as numpy arrays."""
        cache: dict[str, np.ndarray] = {}

        def step(ids: np.ndarray) -> np.ndarray:
            out = self.session.run(
                None, step_feed({"input_ids": ids}, cache, self.layout, self.takes)
            )
            cache.update(zip(self.cache_names, out[1:], strict=True))
            return out[0]

        return step

    def _shared_steps(self, prompt: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
        """A step function: new tokens -> logits, the cache one bound buffer per tensor."""
        batch, length = prompt.shape[0], prompt.shape[1] + self.steps + 1
        binding = self.session.io_binding()
        binding.bind_output(self.logits, "cpu")  # first: get_outputs()[0]
        self.buffers = []  # held: the binding points into them
        for name, (heads, dim) in self.layout.items():
            dtype = self.dtypes[name]
            buffer = np.zeros((batch, heads, length, dim), dtype=dtype)
            self.buffers.append(buffer)
            shape = list(buffer.shape)
            binding.bind_input(name, "cpu", 0, dtype, shape, buffer.ctypes.data)
            binding.bind_output(self.presents[name], "cpu", 0, dtype, shape, buffer.ctypes.data)
        total = 0

        def step(ids: np.ndarray) -> np.ndarray:
            nonlocal total
            new = ids.shape[1]
            total += new
            binding.bind_cpu_input("input_ids", ids)
            binding.bind_cpu_input(MASK, np.ones((batch, total), dtype=np.int64))
            if "position_ids" in self.takes:
                positions = np.broadcast_to(np.arange(total - new, total), (batch, new))
                binding.bind_cpu_input("position_ids", np.ascontiguousarray(positions))
            binding.bind_output(self.logits, "cpu")  # again: its shape changes after the prefill
            self.session.run_with_iobinding(binding)
            return binding.get_outputs()[0].numpy()

        return step

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
