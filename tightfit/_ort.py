"""ONNX Runtime sessions configured by a hardware profile, and batched inference.

Below kernels and evaluators: both run exported graphs (bias correction, accuracy).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from tightfit.hardware_profiles import HardwareProfile


def make_session(
    path: Path | str | bytes,
    profile: HardwareProfile | None = None,
    threads: int | None = None,
) -> ort.InferenceSession:
    """A session with fixed threads and spinning off (spinning burns cores other work needs)."""
    options = ort.SessionOptions()
    intra = threads or (profile.intra_op_threads if profile else 1)
    options.intra_op_num_threads = intra
    options.inter_op_num_threads = profile.inter_op_threads if profile else 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    options.log_severity_level = 3
    providers = [profile.execution_provider] if profile else ["CPUExecutionProvider"]
    model = path if isinstance(path, bytes) else str(path)
    return ort.InferenceSession(model, options, providers=providers)


EVAL_BATCH = 64


def predict(onnx_path: Path, inputs: dict[str, np.ndarray], threads: int = 1) -> np.ndarray:
    """Run the model over ``inputs`` in batches; return the stacked first output."""
    session = make_session(onnx_path, threads=threads)
    n = len(next(iter(inputs.values())))
    outs = []
    for i in range(0, n, EVAL_BATCH):
        feed = {k: v[i : i + EVAL_BATCH] for k, v in inputs.items()}
        outs.append(session.run(None, feed)[0])
    return np.concatenate(outs)
