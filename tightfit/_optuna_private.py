"""The two places tightfit reaches past Optuna's public API, in one module (Optuna is bounded
to <6 in pyproject.toml; a change there breaks here, loudly, and nowhere else).

- :func:`hypervolume`: Optuna's own ``compute_hypervolume`` (WFG), which its samplers and
  ``plot_hypervolume_history`` use but do not export.
- :func:`set_running_trial_attr`: a user attribute on a trial that is RUNNING in storage but
  has no live ``Trial`` object (one a crashed driver left behind).
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _private(what: str, error: Exception) -> RuntimeError:
    import optuna

    return RuntimeError(
        f"Optuna {optuna.__version__} no longer offers {what} as tightfit expects ({error}); "
        "install the Optuna version pyproject.toml allows"
    )


def hypervolume(points: np.ndarray, reference: np.ndarray) -> float:
    """The hypervolume of ``points`` (minimised, one row each, dominated ones allowed) up to
    ``reference``."""
    try:
        from optuna._hypervolume import compute_hypervolume
    except ImportError as e:
        raise _private("optuna._hypervolume.compute_hypervolume", e) from e
    return float(compute_hypervolume(points, reference, assume_pareto=False))


def set_running_trial_attr(study: Any, trial: Any, key: str, value: Any) -> None:
    """``trial.user_attrs[key] = value`` in storage, for a RUNNING ``FrozenTrial``."""
    try:
        study._storage.set_trial_user_attr(trial._trial_id, key, value)
    except AttributeError as e:
        raise _private("Study._storage / FrozenTrial._trial_id", e) from e
