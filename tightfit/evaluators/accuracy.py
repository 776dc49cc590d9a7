"""Task quality of an exported model, measured in ONNX Runtime (what ships)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tightfit._ort import predict
from tightfit.exceptions import CandidateError
from tightfit.objectives import Objective
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
    baseline_subset: float,
    quality: Objective,
    limit: float,
    z: float,
) -> tuple[float, str, dict[str, float]]:
    """The metric on ``subset`` first; on the whole split only if the candidate may be feasible.

    Returns (value, stage, extra metrics): stage ``"subset"`` when the subset already shows
    the loss is beyond ``limit`` (:func:`clearly_infeasible`; the value is the subset's, no
    extras), else ``"full"``, computed over every sample (the subset's outputs are reused).
    """
    first = _outputs(onnx_path, data, subset, threads=1)
    subset_value = data.score(first, subset)
    if clearly_infeasible(quality, subset_value, baseline_subset, len(subset), limit, z):
        return subset_value, "subset", {}
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


def noise_margin(quality: Objective, value: float, n: int, z: float, limit: float) -> float:
    """How much a loss measured on ``n`` samples may be noise, in loss units.

    Accuracy: ``z`` binomial standard errors at ``value``. A metric without a per-sample
    error model (perplexity) gets ``z / 2`` times the ``limit``: at the default z = 2, only a
    loss past twice the limit counts as clearly infeasible on a subset.
    """
    if quality.name != "accuracy":
        return z / 2 * limit
    p = min(max(value, 1.0 / n), 1.0 - 1.0 / n)
    return z * float(np.sqrt(p * (1.0 - p) / n))


def clearly_infeasible(
    quality: Objective, value: float, baseline: float, n: int, limit: float, z: float
) -> bool:
    """Whether the loss of ``value`` (on a subset of ``n`` samples) against ``baseline`` (on
    the same subset) exceeds ``limit`` by more than its noise, so the full evaluation cannot
    rescue it."""
    return quality.loss(baseline, value) - limit > noise_margin(quality, value, n, z, limit)
