"""A profile's summary once its search ends: the tables, the front's figures and the summary
run's metrics (hypervolume, reuse, the re-measurement, the recipe, A/A, contention, cost)."""

from __future__ import annotations

import optuna
from optuna.trial import TrialState

from tightfit.keys import StudyAttr, TrialAttr
from tightfit.runs import pareto
from tightfit.runs._tracker import Tracker
from tightfit.search import joint_metrics, latency_reuse_metrics, recipe_metrics
from tightfit.search.outcome import ProfileOutcome, SearchOutcome
from tightfit.workdir import atomic_write


def summarise(p: ProfileOutcome, outcome: SearchOutcome, tracker: Tracker) -> None:
    """Write ``p``'s tables and figures under its summary folder, log them with the summary
    metrics to its summary run, and set ``p.front``."""
    config, study = outcome.config, p.study
    frame = pareto.trials_frame(study)
    p.front = front = pareto.front_frame(study)
    d = p.summary_dir
    files = [
        atomic_write(d / "trials.csv", frame.to_csv(index=False)),
        atomic_write(d / "front.csv", front.to_csv(index=False)),
        d / "space.json",
        d / "refused.json",
    ]
    if not front.empty:
        files.append(pareto.front_figure_html(study, d / "front.html"))
        title = f"{config.name} on {p.profile}"
        files.append(pareto.front_figure_png(frame, d / "front.png", title, config.quality.name))
    feasible = frame[frame["feasible"]] if not frame.empty else frame
    metrics = {
        "n_trials": float(p.n_complete),
        "n_failed": float(p.n_failed),
        "n_front": float(len(front)),
        "n_refused_units": float(p.n_refused),
        f"baseline_{config.quality.name}": p.baseline[config.quality.name],
        "baseline_latency_ms": p.baseline["latency_ms"],
        "baseline_size_mb": p.baseline["size_mb"],
        "hypervolume": pareto.hypervolume(front, p.baseline, list(config.objectives)),
    }
    if not feasible.empty:
        metrics["best_feasible_speedup"] = float(feasible["speedup"].max())
    for fmt, m in study.user_attrs.get(StudyAttr.INT8_FORMATS_MEASURED, {}).items():
        if isinstance(m, dict) and "latency_ms" in m:  # int8 settings auto: each measured
            metrics[f"uniform_int8_{fmt}_latency_ms"] = m["latency_ms"]
    metrics.update(latency_reuse_metrics(study))
    metrics.update(joint_metrics(study))
    metrics.update(recipe_metrics(study))
    aa = p.aa_check
    if aa:
        metrics["aa_ratio"] = aa["ratio"]
        metrics["aa_error"] = aa["error"]
        metrics["aa_exceeded"] = float(aa["exceeded"])
    metrics.update(contention_metrics(study))
    # what the driver itself cost (sampling, dispatch, telling, logging), for the whole
    # search: the profiles ran together
    metrics["search_wall_s"] = outcome.wall_s
    metrics["orchestration_s"] = outcome.wall_s - outcome.wait_s
    metrics["orchestration_share"] = (outcome.wall_s - outcome.wait_s) / outcome.wall_s
    tracker.log_summary(
        p.profile,
        metrics,
        files,
        params={
            "sampler": config.sampler.name,
            "seed": config.seed,
            "n_units": p.n_units,
            "int8_format": p.int8_format,
            "int8_activation_type": p.int8_activation_type,
        },
        step=p.n_complete,
    )


def contention_metrics(study: optuna.Study) -> dict[str, float]:
    """How much of the search's measuring others disturbed: rounds dropped for contention
    over rounds run, and the trials measured under load (too few quiet rounds)."""
    kept = [
        t.user_attrs[TrialAttr.LATENCY]
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if t.user_attrs.get(TrialAttr.LATENCY_CACHE) == "miss" and TrialAttr.LATENCY in t.user_attrs
    ]
    if not kept:
        return {}
    rounds = sum(k["rounds"] + k.get("rounds_dropped", 0) for k in kept)
    contended = sum(k.get("rounds_contended", 0) for k in kept)
    return {
        "rounds_contended_share": contended / rounds if rounds else 0.0,
        "n_measured_under_load": float(sum(bool(k.get("disturbed")) for k in kept)),
    }
