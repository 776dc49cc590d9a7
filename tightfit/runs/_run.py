"""``run_search``: a whole search, with its records: the work directory, MLflow, the summaries."""

from __future__ import annotations

from tightfit.config import ConfigLike, as_config
from tightfit.runs._tracker import Tracker
from tightfit.runs.summary import summarise
from tightfit.search import ProgressHook, SearchOutcome, search
from tightfit.workdir import prepare_workdir, workdir_lock


def run_search(config: ConfigLike, progress: ProgressHook | None = None) -> SearchOutcome:
    """Run (or resume) a search; return every profile's study and feasible Pareto front.

    ``config`` is a :class:`~tightfit.config.SearchConfig`, the path of a YAML file or a
    mapping of its fields (checked alike, by :func:`~tightfit.config.as_config`). One search at
    a time holds its work directory; rerunning a stopped search resumes it. Each trial is an
    MLflow run, and each profile gets a summary run with its front, figures and metrics.
    ``progress`` is called with a :class:`~tightfit.search.Progress` after every trial.

    Example:
        >>> import tightfit
        >>> outcome = tightfit.run_search(  # doctest: +SKIP
        ...     {"name": "demo", "model": "digits-cnn", "data": "digits", "n_trials": 12}
        ... )
        >>> outcome.front("cpu-ort")[["trial", "accuracy", "latency_ms", "speedup"]]  # doctest: +SKIP
    """
    config = as_config(config)
    workdir = prepare_workdir(config)
    with workdir_lock(workdir):  # one search at a time in a work directory
        tracker = Tracker(
            workdir, config.name, uri=config.mlflow.tracking_uri, objectives=list(config.objectives)
        )
        outcome = search(config, workdir, tracker, progress)
        for profile in outcome.profiles:
            summarise(profile, outcome, tracker)
    return outcome
