"""The search: an Optuna ask/tell driver with evaluations as Ray tasks."""

from tightfit.search._driver import ProfileOutcome, SearchOutcome, run_search
from tightfit.studies import make_sampler
from tightfit.workspace import (
    Evaluation,
    Setup,
    compress_and_score,
    evaluate_candidate,
    measure,
)

__all__ = [
    "Evaluation",
    "ProfileOutcome",
    "SearchOutcome",
    "Setup",
    "compress_and_score",
    "evaluate_candidate",
    "make_sampler",
    "measure",
    "run_search",
]
