"""``run_search``: a whole search, with its records: the work directory, MLflow, the summaries."""

from __future__ import annotations

from tightfit.config import SearchConfig
from tightfit.runs._tracker import Tracker
from tightfit.runs.summary import summarise
from tightfit.search import ProgressHook, SearchOutcome, search
from tightfit.workdir import prepare_workdir, workdir_lock


def run_search(config: SearchConfig, progress: ProgressHook | None = None) -> SearchOutcome:
    """Run (or resume) the search ``config`` describes; return every profile's front.

    One search at a time holds a work directory. Each trial is an MLflow run, and each profile
    gets a summary run with its front, figures and metrics (``runs.summary``).
    """
    workdir = prepare_workdir(config)
    with workdir_lock(workdir):  # one search at a time in a work directory
        tracker = Tracker(
            workdir, config.name, uri=config.mlflow.tracking_uri, objectives=list(config.objectives)
        )
        outcome = search(config, workdir, tracker, progress)
        for profile in outcome.profiles:
            summarise(profile, outcome, tracker)
    return outcome
