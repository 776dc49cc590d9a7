"""The user's data: calibration and validation inputs, targets and the metric, from arrays or
from loaders (a torch ``DataLoader`` or any iterable of batches), checked at the boundary."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tightfit._naming import unknown_name_message
from tightfit.config import CallableSpec, DataSpec
from tightfit.exceptions import DataError
from tightfit.task._calls import call_with_cache, resolve_callable
from tightfit.task._metrics import METRICS, Metric

__all__ = ["TaskData", "is_token_input", "load_data"]

#: Batch entries taken as the targets when a loader yields mappings (Hugging Face's names).
LABEL_KEYS = ("labels", "label")


@dataclass(frozen=True)
class TaskData:
    """Calibration inputs, validation inputs and targets, and the metric.

    Inputs are named arrays, one per model input, in the order of ``forward``'s arguments;
    the first axis is the sample axis. ``metric`` (the quality objective) is a built-in name
    (:data:`METRICS`, each with its direction) or a picklable callable, higher is better; ``extra_metrics`` are logged beside it on every fully evaluated
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

    @property
    def direction(self) -> str:
        """``maximize`` or ``minimize``: a built-in metric's own; a callable is higher-is-better."""
        return METRICS[self.metric].direction if isinstance(self.metric, str) else "maximize"

    def metric_fn(self) -> Metric:
        return METRICS[self.metric].fn if isinstance(self.metric, str) else self.metric

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


def _as_named(value: Any, field: str, source: str) -> dict[str, np.ndarray]:
    if isinstance(value, (np.ndarray, torch.Tensor)):
        value = {"input": value}
    if not isinstance(value, Mapping) or not value:
        raise DataError(
            f"data.callable '{source}': {field} must be an array or a mapping of input name to array"
        )
    out = {}
    for name, arr in value.items():
        arr = _numpy(arr, f"data.callable '{source}': {field}['{name}']")
        if arr.dtype == np.float64:
            arr = arr.astype(np.float32)
        if arr.ndim < 1 or len(arr) == 0:
            raise DataError(
                f"data.callable '{source}': {field}['{name}'] is empty; give at least one sample"
            )
        out[str(name)] = np.ascontiguousarray(arr)
    return out


def _is_loader(value: Any) -> bool:
    """A DataLoader, a generator, any iterable of batches: not an array, a tensor or a mapping."""
    if isinstance(value, (np.ndarray, torch.Tensor, Mapping, str, bytes)):
        return False
    return isinstance(value, Iterable)


def _numpy(value: Any, where: str) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    try:
        return np.asarray(value)
    except Exception as e:  # noqa: BLE001 - ragged lists, objects
        raise DataError(f"{where}: cannot be made an array ({type(e).__name__}: {e})") from None


def _split_batch(batch: Any, where: str) -> tuple[Any, Any]:
    """(inputs, targets or None) of one batch: ``(inputs, targets)``, a mapping with a label
    entry, or inputs alone."""
    if isinstance(batch, (tuple, list)):
        if len(batch) == 2:
            return batch[0], batch[1]
        if len(batch) == 1:
            return batch[0], None
        raise DataError(
            f"{where}: a batch is a sequence of {len(batch)} items; give (inputs, targets), "
            "with several inputs as a mapping {name: tensor}, or a data.transform that returns it"
        )
    if isinstance(batch, Mapping):
        label = next((k for k in LABEL_KEYS if k in batch), None)
        inputs = {k: v for k, v in batch.items() if k != label}
        return inputs, (batch[label] if label else None)
    return batch, None


def _read_loader(
    loader: Iterable[Any],
    which: str,
    limit: int | None,
    transform: Callable[[Any], Any] | None,
    source: str,
) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """Read batches until ``limit`` samples: named inputs, and targets where batches have them."""
    where = f"data.callable '{source}': {which} loader"
    inputs: dict[str, list[np.ndarray]] = {}
    targets: list[np.ndarray] = []
    n = 0
    for i, batch in enumerate(loader):
        if transform is not None:
            try:
                batch = transform(batch)
            except Exception as e:
                raise DataError(
                    f"data.transform failed on {which} batch {i}: {type(e).__name__}: {e}"
                ) from e
        x, y = _split_batch(batch, f"{where}, batch {i}")
        named = {"input": x} if not isinstance(x, Mapping) else x
        for name, value in named.items():
            inputs.setdefault(str(name), []).append(_numpy(value, f"{where}, batch {i}, {name!r}"))
        if y is not None:
            targets.append(_numpy(y, f"{where}, batch {i}, targets"))
        elif targets:
            raise DataError(f"{where}: batch {i} has no targets but earlier batches had")
        n += len(next(iter(inputs.values()))[-1])
        if limit is not None and n >= limit:
            break
    if n == 0:
        raise DataError(f"{where} yielded no samples")
    if targets and len(targets) != len(next(iter(inputs.values()))):
        raise DataError(f"{where}: the first batches had no targets but later ones had")
    out = {}
    for name, parts in inputs.items():
        try:
            out[name] = np.concatenate(parts)[:limit]
        except ValueError as e:
            raise DataError(
                f"{where}: input {name!r} has batches of different per-sample shapes ({e}); "
                "give every batch one shape (for token sequences, pad to one length, e.g. the "
                "tokenizer's padding='max_length')"
            ) from None
    return out, (np.concatenate(targets)[:limit] if targets else None)


def _metric(value: Any, field: str) -> str | Metric:
    """A built-in metric's name, or a callable."""
    if isinstance(value, str):
        if value not in METRICS:
            raise DataError(f"{field}: {unknown_name_message('metric', value, METRICS)}")
        return value
    if not callable(value):
        raise DataError(
            f"{field} must be a built-in name {sorted(METRICS)} or a callable "
            f"(outputs, targets) -> float, got {type(value).__name__}"
        )
    return value


def load_data(spec: CallableSpec, cache_dir: Path | None = None) -> TaskData:
    """Call the data callable, read its loaders if it returns loaders, and check names, shapes
    and the metric."""
    spec = spec if isinstance(spec, DataSpec) else DataSpec(**spec.model_dump())
    fn = resolve_callable(spec.callable, "data")
    try:
        raw = call_with_cache(fn, spec.kwargs, cache_dir)
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
    if not isinstance(raw, Mapping) or not {"calibration", "validation"} <= set(raw):
        raise DataError(
            f"data.callable '{spec.callable}' must return a TaskData or a mapping with "
            "'calibration', 'validation' (arrays or loaders), 'targets' unless validation is a "
            "loader of (inputs, targets) batches, and optionally 'metric' and 'extra_metrics'"
        )
    transform = resolve_callable(spec.transform, "data.transform") if spec.transform else None
    if _is_loader(raw["calibration"]):
        calibration, _ = _read_loader(
            raw["calibration"], "calibration", spec.calibration_samples, transform, spec.callable
        )
    else:
        calibration = raw["calibration"]
    targets = raw.get("targets")
    if _is_loader(raw["validation"]):
        validation, read = _read_loader(
            raw["validation"], "validation", spec.validation_samples, transform, spec.callable
        )
        if targets is None:
            targets = read
        if targets is None:
            raise DataError(
                f"data.callable '{spec.callable}': the validation loader's batches have no "
                "targets; yield (inputs, targets), a mapping with 'labels', or give 'targets'"
            )
    else:
        validation = raw["validation"]
    if targets is None:
        raise DataError(
            f"data.callable '{spec.callable}' returned no 'targets' for its validation arrays"
        )
    calibration = _as_named(calibration, "calibration", spec.callable)
    validation = _as_named(validation, "validation", spec.callable)
    targets = np.asarray(targets)
    metric = _metric(raw.get("metric", "accuracy"), "data: metric")
    extra: dict[str, Metric] = {}
    for name, value in dict(raw.get("extra_metrics") or {}).items():
        fn_or_name = _metric(value, f"data: extra_metrics['{name}']")
        extra[name] = METRICS[fn_or_name].fn if isinstance(fn_or_name, str) else fn_or_name
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
