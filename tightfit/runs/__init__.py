"""MLflow logging, Pareto fronts, and export of the winners."""

from tightfit.runs.pareto import front_frame, knee, trials_frame

__all__ = ["front_frame", "knee", "trials_frame"]
