"""A search's records: the run itself (``run_search``), MLflow logging, Pareto fronts, export."""

from tightfit.runs._run import run_search
from tightfit.runs.pareto import front_frame, knee, trials_frame

__all__ = ["front_frame", "knee", "run_search", "trials_frame"]
