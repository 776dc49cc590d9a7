"""Pareto fronts of a study: the table, the knee point, and the figures."""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from tightfit import objectives as obj
from tightfit.keys import StudyAttr, TrialAttr
from tightfit.studies import is_feasible
from tightfit.workdir import atomic_write

if TYPE_CHECKING:
    import optuna


def trials_frame(study: optuna.Study) -> pd.DataFrame:
    """One row per finished trial: objectives, speedup, feasibility, state and error; the latency
    predicted before it was measured, and the one measured again at the end of the search."""
    from optuna.trial import TrialState

    names = study.metric_names or [f"value_{i}" for i in range(len(study.directions))]
    quality = obj.quality_of(study.metric_names)
    front = {t.number for t in study.best_trials}
    joint = study.user_attrs.get(StudyAttr.REMEASURED_JOINTLY, {}).get("latency_ms", {})
    rows = []
    states = (TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED)
    for t in study.get_trials(deepcopy=False, states=states):
        state = t.state.name.lower()
        if t.state == TrialState.PRUNED:  # not measured: prescreened, subset, accuracy, repeat
            state = t.user_attrs.get(TrialAttr.STAGE, "prescreened")
        row: dict = {"trial": t.number, "state": state}
        if t.values is not None:
            row.update(dict(zip(names, t.values, strict=True)))
        row["speedup"] = t.user_attrs.get(TrialAttr.SPEEDUP)
        row[quality.loss_name] = t.user_attrs.get(quality.loss_name)
        row["feasible"] = is_feasible(t)
        row["baseline"] = bool(t.user_attrs.get(TrialAttr.IS_BASELINE, False))
        row["pareto"] = t.number in front
        row["predicted_latency_ms"] = t.user_attrs.get(TrialAttr.PREDICTED_LATENCY_MS)
        # measured again at the end of the search, together with the others (latency.remeasure)
        row["latency_ms_joint"] = joint.get(str(t.number))
        row["latency_cache"] = t.user_attrs.get(TrialAttr.LATENCY_CACHE)
        latency = t.user_attrs.get(TrialAttr.LATENCY) or {}
        # too few rounds ran with the pinned CPUs to itself: the number carries others' load
        row["measured_under_load"] = bool(latency.get("disturbed", False))
        row["rounds_contended"] = latency.get("rounds_contended")
        row["knobs"] = t.user_attrs.get(TrialAttr.SUMMARY, "")
        row["error"] = t.user_attrs.get(TrialAttr.ERROR, "")
        rows.append(row)
    return pd.DataFrame(rows)


def front_frame(study: optuna.Study) -> pd.DataFrame:
    """The feasible Pareto front, sorted by latency (or the second objective)."""
    frame = trials_frame(study)
    if frame.empty:
        return frame
    front = frame[frame["pareto"]].copy()
    key = "latency_ms" if "latency_ms" in front else front.columns[2]
    return front.sort_values(key).reset_index(drop=True)


def knee(front: pd.DataFrame, objectives: list[str]) -> int:
    """Trial number of the knee: nearest to the ideal point after min-max scaling each objective.

    Each objective is turned into "lower is better" and scaled to [0, 1] over the front; the
    knee is the point with the smallest Euclidean distance to (0, ..., 0), the best balance.
    """
    if front.empty:
        raise ValueError("the front is empty")
    cols = []
    for name in objectives:
        v = front[name].to_numpy(dtype=float) * obj.sign(name)
        span = v.max() - v.min()
        cols.append((v - v.min()) / span if span > 0 else np.zeros_like(v))
    dist = np.sqrt(np.sum(np.stack(cols, axis=1) ** 2, axis=1))
    return int(front["trial"].iloc[int(np.argmin(dist))])


def hypervolume(front: pd.DataFrame, baseline: dict[str, float], objectives: list[str]) -> float:
    """Hypervolume of the front, objectives scaled by the baseline (reference point 1.0 each).

    Accuracy counts as drop below the baseline (0 = baseline, 1 = zero accuracy), latency and
    size as fractions of the baseline's; points worse than the reference add nothing.
    """
    if front.empty:
        return 0.0
    return obj.hypervolume(front[objectives].to_dict("records"), baseline, objectives)


def hypervolume_history(
    study: optuna.Study, baseline: dict[str, float], objectives: list[str]
) -> list[float]:
    """The front's hypervolume after each finished trial, in the order trials finished.

    Only complete, feasible trials add points (as on the front); failed, pre-screened and
    stopped trials count as spent trials that added nothing.
    """
    from optuna.trial import TrialState

    states = (TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED)
    done = [
        t
        for t in study.get_trials(deepcopy=False, states=states)
        if not t.user_attrs.get(TrialAttr.INTERRUPTED)
    ]
    done.sort(key=lambda t: (t.datetime_complete or t.datetime_start, t.number))
    points: list[dict[str, float]] = []
    history = []
    for t in done:
        if t.state == TrialState.COMPLETE and is_feasible(t):
            points.append(dict(zip(objectives, t.values, strict=True)))
            history.append(obj.hypervolume(points, baseline, objectives))
        else:
            history.append(history[-1] if history else 0.0)
    return history


def front_figure_html(study: optuna.Study, path: Path) -> Path:
    """Optuna's interactive Pareto plot (quality vs latency), infeasible trials greyed."""
    import optuna.visualization as vis

    names = list(study.metric_names or [])
    quality = obj.quality_of(names)
    fig = vis.plot_pareto_front(
        study,
        targets=lambda t: (
            t.values[names.index("latency_ms")],
            t.values[names.index(quality.name)],
        ),
        target_names=["latency_ms", _label(quality)],
    )
    title = f"Pareto front: {study.study_name}"
    aa = study.user_attrs.get(StudyAttr.AA_CHECK)
    if aa:  # the machine's measurement error, beside the speedups it carries
        title += (
            f"<br><sup>A/A check (baseline vs itself): {aa['ratio']:.3f}, error "
            f"{aa['error']:.1%}"
            + (
                f": EXCEEDS the tolerance of {aa['tolerance']:.0%}, measured on a noisy machine"
                if aa["exceeded"]
                else f" (tolerance {aa['tolerance']:.0%})"
            )
            + "</sup>"
        )
    fig.update_layout(title=title)
    return atomic_write(path, fig.to_html(include_plotlyjs=True, full_html=True))


def _label(quality: obj.Objective) -> str:
    better = "higher" if quality.direction == "maximize" else "lower"
    return f"{quality.name} ({better} is better)"


def front_figure_png(
    frame: pd.DataFrame, path: Path, title: str, quality: str = "accuracy"
) -> Path:
    """A static quality-vs-latency scatter with the front marked, for reports and the UI."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = frame[frame["state"] == "complete"]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    infeasible = done[~done["feasible"]]
    feasible = done[done["feasible"] & ~done["pareto"]]
    front = done[done["pareto"]].sort_values("latency_ms")
    q = quality
    ax.scatter(infeasible["latency_ms"], infeasible[q], c="#cccccc", s=18, label="infeasible")
    ax.scatter(feasible["latency_ms"], feasible[q], c="#6b8fbf", s=22, label="feasible")
    ax.plot(front["latency_ms"], front[q], "-o", c="#d62728", ms=6, label="Pareto front")
    base = done[done["baseline"]]
    ax.scatter(base["latency_ms"], base[q], marker="*", s=160, c="black", label="baseline")
    ax.set_xlabel("latency (ms, measured)")
    ax.set_ylabel(_label(obj.OBJECTIVES[q]))
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return atomic_write(path, buffer.getvalue())
