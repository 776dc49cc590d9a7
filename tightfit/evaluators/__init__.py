"""Accuracy, latency and size of an exported candidate, measured the way it will run."""

from tightfit.evaluators.accuracy import evaluate_accuracy, evaluate_quality, predict
from tightfit.evaluators.latency import (
    LatencyResult,
    input_feed,
    measure_jointly,
    measure_latency,
)
from tightfit.evaluators.size import size_mb

__all__ = [
    "LatencyResult",
    "evaluate_accuracy",
    "evaluate_quality",
    "input_feed",
    "measure_jointly",
    "measure_latency",
    "predict",
    "size_mb",
]
