"""The user's model and data, loaded from ``module:callable`` specs and checked at the boundary."""

from __future__ import annotations

import hashlib
import importlib
import inspect
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from tightfit._naming import unknown_name_message
from tightfit.config import CallableSpec
from tightfit.exceptions import DataError, ModelError

__all__ = ["METRICS", "TaskData", "load_data", "load_model", "model_id"]

#: Built-in examples, usable by name in place of ``module:callable``.
EXAMPLES = {
    "digits-cnn": "tightfit.examples.digits:pretrained_cnn",
    "digits": "tightfit.examples.digits:load_data",
    "fashion-mnist-cnn": "tightfit.examples.fashion_mnist:pretrained_cnn",
    "fashion-mnist": "tightfit.examples.fashion_mnist:load_data",
    "efficientnet-lite0": "tightfit.examples.efficientnet:pretrained_lite0",
    "imagenet-photos": "tightfit.examples.efficientnet:load_data",
    "minilm": "tightfit.examples.minilm:pretrained_minilm",
    "mr-polarity": "tightfit.examples.minilm:load_data",
}


def top1_accuracy(outputs: np.ndarray, targets: np.ndarray) -> float:
    """Share of samples whose arg-max over the last axis equals the integer target."""
    return float(np.mean(outputs.argmax(axis=-1) == targets))


#: A metric scores a model's outputs against targets (higher is better). Targets are whatever
#: the data callable returns, indexed by sample on the first axis (they may carry references,
#: e.g. the uncompressed model's outputs, beside labels).
Metric = Callable[[np.ndarray, np.ndarray], float]


def top5_accuracy(outputs: np.ndarray, targets: np.ndarray) -> float:
    """Share of samples whose integer target is among the 5 highest outputs (all of them when
    there are 5 classes or fewer)."""
    k = min(5, outputs.shape[-1])
    top = np.argpartition(-outputs, k - 1, axis=-1)[..., :k]
    return float(np.mean((top == np.asarray(targets)[..., None]).any(axis=-1)))


def f1_macro(outputs: np.ndarray, targets: np.ndarray) -> float:
    """F1 of the arg-max predictions, averaged over the classes present (scikit-learn's
    ``average="macro"``): for imbalanced classes, where accuracy hides a class the model drops."""
    from sklearn.metrics import f1_score

    predicted = outputs.argmax(axis=-1).ravel()
    return float(f1_score(np.asarray(targets).ravel(), predicted, average="macro", zero_division=0))


METRICS: dict[str, Metric] = {
    "accuracy": top1_accuracy,
    "top5_accuracy": top5_accuracy,
    "f1_macro": f1_macro,
}


@dataclass(frozen=True)
class TaskData:
    """Calibration inputs, validation inputs and targets, and the metric (higher is better).

    Inputs are named arrays, one per model input, in the order of ``forward``'s arguments;
    the first axis is the sample axis. ``metric`` (the accuracy objective) is a built-in name
    or a picklable callable; ``extra_metrics`` are logged beside it on every fully evaluated
    trial (e.g. fidelity to the uncompressed model), never optimised.
    """

    calibration: dict[str, np.ndarray]
    validation: dict[str, np.ndarray]
    targets: np.ndarray
    metric: str | Metric = "accuracy"
    extra_metrics: dict[str, Metric] = field(default_factory=dict)

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(self.validation)

    def metric_fn(self) -> Metric:
        return METRICS[self.metric] if isinstance(self.metric, str) else self.metric

    def score(self, outputs: np.ndarray, rows: np.ndarray | None = None) -> float:
        """The metric of ``outputs`` (for the validation ``rows``, or all of them)."""
        targets = self.targets if rows is None else self.targets[rows]
        return float(self.metric_fn()(outputs, targets))

    def extras(self, outputs: np.ndarray) -> dict[str, float]:
        """Every extra metric of ``outputs`` on the whole validation split."""
        return {name: float(fn(outputs, self.targets)) for name, fn in self.extra_metrics.items()}

    def example_inputs(self, n: int = 2) -> tuple[torch.Tensor, ...]:
        return tuple(torch.from_numpy(self.calibration[k][:n]) for k in self.input_names)


def is_token_input(sample_shape: tuple[int, ...], dtype: np.dtype | torch.dtype | str) -> bool:
    """Token sequences (ids, masks): one axis per sample, integer or boolean. Their length may
    differ between calibration and validation, the export keeps it dynamic, and latency is
    measured at the hardware profile's ``sequence_length``."""
    if isinstance(dtype, torch.dtype):
        numeric = dtype.is_floating_point or dtype.is_complex
        return len(sample_shape) == 1 and not numeric
    return len(sample_shape) == 1 and np.dtype(dtype).kind in "iub"


def resolve_callable(spec: str, what: str) -> Callable[..., Any]:
    """Import ``module:callable`` (or a built-in example name)."""
    err = DataError if what == "data" else ModelError
    target = EXAMPLES.get(spec, spec)
    if ":" not in target:
        raise err(
            f"{what}.callable: {unknown_name_message('built-in example', spec, EXAMPLES)}"
            "; or give 'module:callable'"
        )
    module_name, _, attr = target.partition(":")
    if str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))  # let users name modules beside their config
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as e:
        raise err(
            f"{what}.callable: cannot import module '{module_name}' ({type(e).__name__}: {e})"
        ) from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise err(f"{what}.callable: module '{module_name}' has no attribute '{attr}'")
        obj = getattr(obj, part)
    if not callable(obj):
        raise err(f"{what}.callable: '{target}' is not callable")
    return obj


def _call(fn: Callable[..., Any], spec: CallableSpec, cache_dir: Path | None) -> Any:
    kwargs = dict(spec.kwargs)
    params = inspect.signature(fn).parameters
    if cache_dir is not None and "cache_dir" in params and "cache_dir" not in kwargs:
        kwargs["cache_dir"] = cache_dir
    return fn(**kwargs)


def load_model(spec: CallableSpec, cache_dir: Path | None = None) -> nn.Module:
    """Call the model callable; the result must be an ``nn.Module`` (put in eval mode)."""
    fn = resolve_callable(spec.callable, "model")
    try:
        model = _call(fn, spec, cache_dir)
    except Exception as e:
        raise ModelError(f"model.callable '{spec.callable}' failed: {type(e).__name__}: {e}") from e
    if not isinstance(model, nn.Module):
        raise ModelError(
            f"model.callable '{spec.callable}' returned {type(model).__name__}, expected a torch.nn.Module"
        )
    return model.eval()


def _as_named(value: Any, field: str, source: str) -> dict[str, np.ndarray]:
    if isinstance(value, (np.ndarray, torch.Tensor)):
        value = {"input": value}
    if not isinstance(value, Mapping) or not value:
        raise DataError(
            f"data.callable '{source}': {field} must be an array or a mapping of input name to array"
        )
    out = {}
    for name, arr in value.items():
        arr = arr.numpy() if isinstance(arr, torch.Tensor) else np.asarray(arr)
        if arr.dtype == np.float64:
            arr = arr.astype(np.float32)
        if arr.ndim < 1 or len(arr) == 0:
            raise DataError(
                f"data.callable '{source}': {field}['{name}'] is empty; give at least one sample"
            )
        out[str(name)] = np.ascontiguousarray(arr)
    return out


def load_data(spec: CallableSpec, cache_dir: Path | None = None) -> TaskData:
    """Call the data callable and check names, shapes and the metric."""
    fn = resolve_callable(spec.callable, "data")
    try:
        raw = _call(fn, spec, cache_dir)
    except Exception as e:
        raise DataError(f"data.callable '{spec.callable}' failed: {type(e).__name__}: {e}") from e
    if isinstance(raw, TaskData):
        raw = {
            "calibration": raw.calibration,
            "validation": raw.validation,
            "targets": raw.targets,
            "metric": raw.metric,
            "extra_metrics": raw.extra_metrics,
        }
    if not isinstance(raw, Mapping) or not {"calibration", "validation", "targets"} <= set(raw):
        raise DataError(
            f"data.callable '{spec.callable}' must return a TaskData or a mapping with "
            "'calibration', 'validation', 'targets' (and optionally 'metric')"
        )
    calibration = _as_named(raw["calibration"], "calibration", spec.callable)
    validation = _as_named(raw["validation"], "validation", spec.callable)
    targets = np.asarray(raw["targets"])
    metric = raw.get("metric", "accuracy")
    if isinstance(metric, str):
        if metric not in METRICS:
            raise DataError(f"data: {unknown_name_message('metric', metric, METRICS)}")
    elif not callable(metric):
        raise DataError(
            f"data: metric must be a built-in name {sorted(METRICS)} or a callable "
            f"(outputs, targets) -> float, got {type(metric).__name__}"
        )
    extra = dict(raw.get("extra_metrics") or {})
    for name, fn in list(extra.items()):
        if isinstance(fn, str) and fn in METRICS:
            extra[name] = METRICS[fn]
        elif not callable(fn):
            raise DataError(
                f"data: extra_metrics['{name}'] must be a built-in metric name or a callable "
                f"(outputs, targets) -> float, got {type(fn).__name__}"
            )
    if list(calibration) != list(validation):
        raise DataError(
            f"data: calibration inputs {list(calibration)} and validation inputs {list(validation)} must have the same names"
        )
    for name in validation:
        cal, val = calibration[name], validation[name]
        tokens = is_token_input(cal.shape[1:], cal.dtype)
        if cal.shape[1:] == val.shape[1:] or (tokens and is_token_input(val.shape[1:], val.dtype)):
            continue
        raise DataError(
            f"data: input '{name}' has per-sample shape {cal.shape[1:]} in calibration "
            f"but {val.shape[1:]} in validation; only token sequences (integer arrays of shape "
            f"(samples, length)) may differ, in length"
        )
    n_val = {len(v) for v in validation.values()}
    if len(n_val) != 1 or len(targets) != n_val.pop():
        raise DataError(
            f"data: targets has {len(targets)} entries but validation has "
            f"{[len(v) for v in validation.values()]} samples; they must match"
        )
    return TaskData(
        calibration=calibration,
        validation=validation,
        targets=targets,
        metric=metric,
        extra_metrics=extra,
    )


def model_id(model: nn.Module) -> str:
    """Content hash of a model's class and weights: the base-model id in every Candidate."""
    h = hashlib.sha256(type(model).__qualname__.encode())
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]
