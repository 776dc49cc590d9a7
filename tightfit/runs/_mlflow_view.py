"""A ready-made chart view of a search in the MLflow UI, written from code.

The MLflow UI draws no Pareto front by itself and charts only the first 10 runs by default
(research/orchestration.md §3.5). It keeps saved views as experiment tags
``mlflow.sharedViewState.<key>`` holding ``{name, createdAt, updatedAt, state}`` with ``state`` a
JSON string of the runs page state; the page opens one with ``?viewStateShareKey=<key>``. The
format is the UI's internal one (read from the MLflow 3.17 bundle), so this is best-effort: a
UI that cannot read it opens the default view, and ``tests/runs`` checks the bundle still knows
the tag. Pareto points are marked by run colour (the ``mlflow.runColor`` tag).
"""

from __future__ import annotations

import json
import time

from tightfit.objectives import quality_of

VIEW_KEY = "tightfit-pareto"
VIEW_TAG = f"mlflow.sharedViewState.{VIEW_KEY}"
COLOR_TAG = "mlflow.runColor"
COLORS = {"pareto": "#d62728", "feasible": "#1f77b4", "infeasible": "#c7c7c7"}
SECTION = "tightfit-front"


def _card(uuid: str, kind: str, **fields: object) -> dict[str, object]:
    return {
        "uuid": uuid,
        "type": kind,
        "runsCountToCompare": 10000,
        "metricSectionId": SECTION,
        "deleted": False,
        "isGenerated": False,
        **fields,
    }


def view_state(objectives: list[str]) -> dict[str, object]:
    """The runs page state: trial runs sorted by latency, a scatter and parallel coordinates."""
    metrics = [*objectives, "speedup"]
    x = "latency_ms" if "latency_ms" in objectives else objectives[-1]
    return {
        "searchFilter": "tags.`tightfit.kind` = 'trial'",
        "orderByKey": f"metrics.`{x}`",
        "orderByAsc": True,
        "runsHiddenMode": "SHOW_ALL",
        "selectedColumns": [f"metrics.`{m}`" for m in metrics]
        + ["tags.`tightfit.pareto`", "tags.`tightfit.feasible`", "tags.`tightfit.status`"],
        "hideEmptyCharts": True,
        "compareRunSections": [
            {
                "uuid": SECTION,
                "name": "Pareto front (red), feasible (blue), infeasible (grey)",
                "display": True,
                "isReordered": False,
            }
        ],
        "compareRunCharts": [
            _card(
                "tightfit-scatter",
                "SCATTER",
                xaxis={"key": x, "type": "METRIC"},
                yaxis={"key": quality_of(objectives).name, "type": "METRIC"},
            ),
            _card(
                "tightfit-parallel",
                "PARALLEL",
                selectedParams=[],
                selectedMetrics=metrics,
                showAllRuns=True,
            ),
        ],
        "isAccordionReordered": True,
    }


def view_tag(objectives: list[str]) -> tuple[str, str]:
    """The experiment tag (key, value) that holds the view."""
    now = int(time.time() * 1000)
    envelope = {
        "name": "tightfit: Pareto front",
        "createdAt": now,
        "updatedAt": now,
        "state": json.dumps(view_state(objectives)),
    }
    return VIEW_TAG, json.dumps(envelope)


def view_url(base: str, experiment_id: str) -> str:
    return (
        f"{base}/#/experiments/{experiment_id}/runs?viewStateShareKey={VIEW_KEY}"
        "&compareRunsMode=CHART&workflowType=machine_learning"
    )
