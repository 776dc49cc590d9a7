"""Task quality of an exported model, measured in ONNX Runtime (what ships)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tightfit._ort import predict
from tightfit.exceptions import CandidateError
from tightfit.task import TaskData


def _outputs(onnx_path: Path, data: TaskData, rows: np.ndarray | None, threads: int) -> np.ndarray:
    inputs = data.validation if rows is None else {k: v[rows] for k, v in data.validation.items()}
    outputs = predict(onnx_path, inputs, threads)
    if not np.isfinite(outputs).all():
        raise CandidateError("the exported model outputs NaN or inf on validation data")
    return outputs


def evaluate_accuracy(
    onnx_path: Path, data: TaskData, threads: int = 1, subset: np.ndarray | None = None
) -> float:
    """The data's metric on the validation split (or the ``subset`` of its sample indices);
    a non-finite output fails the candidate."""
    return data.score(_outputs(onnx_path, data, subset, threads), subset)


def evaluate_quality(
    onnx_path: Path, data: TaskData, threads: int = 1
) -> tuple[float, dict[str, float]]:
    """The metric and every extra metric on the whole validation split."""
    outputs = _outputs(onnx_path, data, None, threads)
    return data.score(outputs), data.extras(outputs)


def staged_accuracy(
    onnx_path: Path,
    data: TaskData,
    subset: np.ndarray,
    baseline_subset_accuracy: float,
    max_drop: float,
    z: float,
) -> tuple[float, str, dict[str, float]]:
    """Accuracy on ``subset`` first; on the whole split only if the candidate may be feasible.

    Returns (accuracy, stage, extra metrics): stage ``"subset"`` when the subset already shows
    the drop is beyond ``max_drop`` (:func:`clearly_infeasible`; the accuracy is the subset's,
    no extras), else ``"full"``, computed over every sample (the subset's outputs are reused).
    """
    first = _outputs(onnx_path, data, subset, threads=1)
    subset_accuracy = data.score(first, subset)
    if clearly_infeasible(subset_accuracy, baseline_subset_accuracy, len(subset), max_drop, z):
        return subset_accuracy, "subset", {}
    rest = np.setdiff1d(np.arange(len(data.targets)), subset)
    second = _outputs(onnx_path, data, rest, threads=1)
    outputs = np.empty((len(data.targets), *first.shape[1:]), dtype=first.dtype)
    outputs[subset], outputs[rest] = first, second
    return data.score(outputs), "full", data.extras(outputs)


def validation_subset(n: int, fraction: float, minimum: int, seed: int = 0) -> np.ndarray | None:
    """Sorted indices of a fixed random subset of ``n`` validation samples (None: all of them)."""
    size = max(minimum, int(round(n * fraction)))
    if size >= n:
        return None
    return np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))


def noise_margin(accuracy: float, n: int, z: float) -> float:
    """``z`` binomial standard errors of an accuracy measured on ``n`` samples."""
    p = min(max(accuracy, 1.0 / n), 1.0 - 1.0 / n)
    return z * float(np.sqrt(p * (1.0 - p) / n))


def clearly_infeasible(
    subset_accuracy: float, baseline_subset_accuracy: float, n: int, max_drop: float, z: float
) -> bool:
    """Whether the subset's accuracy drop exceeds ``max_drop`` by more than ``z`` standard
    errors (binomial, at the subset accuracy), so the full evaluation cannot rescue it."""
    drop = baseline_subset_accuracy - subset_accuracy
    return drop - max_drop > noise_margin(subset_accuracy, n, z)
