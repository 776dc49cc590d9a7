"""Built-in metrics: each scores a model's outputs against targets and knows which way is better.

Targets are whatever the data gives, indexed by sample on the first axis (they may carry
references, e.g. the uncompressed model's outputs, beside labels).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np

__all__ = ["METRICS", "BuiltinMetric", "Metric", "f1_macro", "perplexity", "top1_accuracy"]

#: A metric: (outputs, targets) -> float.
Metric = Callable[[np.ndarray, np.ndarray], float]

#: Label value that takes no part in a token metric (the Hugging Face convention).
IGNORE_INDEX = -100


def top1_accuracy(outputs: np.ndarray, targets: np.ndarray) -> float:
    """Share of samples whose arg-max over the last axis equals the integer target."""
    return float(np.mean(outputs.argmax(axis=-1) == targets))


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


def perplexity(outputs: np.ndarray, targets: np.ndarray) -> float:
    """exp of the mean next-token negative log-likelihood: a causal language model's logits
    ``(samples, length, vocabulary)`` against the token ids ``(samples, length)`` it was fed
    (position ``t`` predicts token ``t + 1``; ids equal to -100 are not scored).

    Lower is better. Computed one sample at a time in float64, so a large vocabulary costs
    one sample's log-softmax of memory, not the whole split's.
    """
    outputs, targets = np.asarray(outputs), np.asarray(targets)
    if outputs.ndim != 3 or targets.shape != outputs.shape[:2]:
        raise ValueError(
            f"perplexity takes logits (samples, length, vocabulary) and token ids (samples, "
            f"length); got outputs {outputs.shape} and targets {targets.shape}"
        )
    total, count = 0.0, 0
    for logits, ids in zip(outputs, targets, strict=True):
        logits, ids = logits[:-1].astype(np.float64), ids[1:]
        keep = ids != IGNORE_INDEX
        if not keep.any():
            continue
        logits, ids = logits[keep], ids[keep]
        top = logits.max(axis=-1, keepdims=True)
        log_z = np.log(np.exp(logits - top).sum(axis=-1)) + top[:, 0]
        total += float((log_z - logits[np.arange(len(ids)), ids]).sum())
        count += int(keep.sum())
    if count == 0:
        raise ValueError("perplexity: every target is -100; no token to score")
    return float(np.exp(total / count))


@dataclass(frozen=True)
class BuiltinMetric:
    """A metric by name, with the direction that is better."""

    fn: Metric
    direction: Literal["maximize", "minimize"]
    doc: str


METRICS: dict[str, BuiltinMetric] = {
    "accuracy": BuiltinMetric(top1_accuracy, "maximize", "top-1 accuracy"),
    "top5_accuracy": BuiltinMetric(top5_accuracy, "maximize", "top-5 accuracy"),
    "f1_macro": BuiltinMetric(f1_macro, "maximize", "macro-averaged F1"),
    "perplexity": BuiltinMetric(perplexity, "minimize", "next-token perplexity"),
}
