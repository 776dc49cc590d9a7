"""Task quality of an exported model, measured in ONNX Runtime (what ships)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tightfit.evaluators._ort import make_session
from tightfit.exceptions import CandidateError
from tightfit.task import TaskData

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


def evaluate_accuracy(onnx_path: Path, data: TaskData, threads: int = 1) -> float:
    """The data's metric on the validation split; a non-finite output fails the candidate."""
    outputs = predict(onnx_path, data.validation, threads)
    if not np.isfinite(outputs).all():
        raise CandidateError("the exported model outputs NaN or inf on validation data")
    return data.metric_fn()(outputs, data.targets)
