"""The search: an Optuna ask/tell driver over an executor (Ray by default).

``tightfit.run_search`` (``runs``) is the entry point; ``search`` here runs the trials and
leaves the records' summaries to it.
"""

from tightfit.search._driver import ProgressHook, search
from tightfit.search._ray import measure_engines
from tightfit.search._recipe import metrics as recipe_metrics
from tightfit.search._reuse import joint_metrics, latency_reuse_metrics, repeat_error
from tightfit.search._tell import Told
from tightfit.search.outcome import ProfileOutcome, Progress, SearchOutcome
from tightfit.studies import make_sampler
from tightfit.workspace import Evaluation, Setup, compress_and_score, evaluate_candidate, measure

__all__ = [
    "Evaluation",
    "ProfileOutcome",
    "Progress",
    "ProgressHook",
    "SearchOutcome",
    "Told",
    "Setup",
    "compress_and_score",
    "evaluate_candidate",
    "joint_metrics",
    "latency_reuse_metrics",
    "make_sampler",
    "measure",
    "measure_engines",
    "recipe_metrics",
    "repeat_error",
    "search",
]
