"""The standard deployment recipe (``kernels.recipe``), measured beside the front.

At the end of a search its variants are built from the baseline, scored on the validation
data, and measured in the same interleaved rounds as the front's re-measurement, so that the
front's speedups and the recipe's compare under one state of the machine. The study keeps the
result as ``recipe``; the summary run logs ``recipe_<variant>_speedup``, ``recipe_best_speedup``
(the fastest variant within the accuracy constraint) and ``speedup_over_recipe`` (the front's
fastest feasible point, measured in the same rounds, over it).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna

from tightfit import objectives
from tightfit.config import SearchConfig
from tightfit.evaluators import LatencyResult
from tightfit.evaluators.accuracy import evaluate_quality
from tightfit.hardware_profiles import HardwareProfile
from tightfit.kernels.recipe import attention_shape, build_recipe, fused_graph, recipe_variants
from tightfit.keys import StudyAttr
from tightfit.studies import is_feasible
from tightfit.workspace import Workspace

log = logging.getLogger(__name__)

#: the study attribute that keeps the recipe's measurement
ATTR = StudyAttr.RECIPE

#: the row of the plain (unfused) export, measured with the recipe where the baseline is fused;
#: not a variant of the recipe (``recipe_best_speedup`` leaves it out)
PLAIN = "export"


@dataclass
class Recipe:
    variant: str
    onnx: bytes
    accuracy: float
    info: dict[str, Any] = field(default_factory=dict)


def build(
    ws: Workspace, profile: HardwareProfile, check: Callable[[], None] = lambda: None
) -> list[Recipe]:
    """Every variant of the recipe for ``profile``, built from the float baseline and scored on
    the validation data. A variant that cannot be built is logged and left out. ``check`` runs
    before each variant (Ctrl-C stops there)."""
    recipes = []
    attention = attention_shape(ws.model)
    fused: tuple[Path, dict[str, int]] | None = None
    # a decoder's recipe starts from the export: tightfit's decoder fusion (norms, rotary,
    # packed projections) is not the one-minute recipe, onnxscript's optimize_for_ort is
    source = Path(ws.plain_onnx) if profile.generation is not None else ws.float_onnx
    if ws.export_record.get("fusions"):  # the search's baseline is fused already
        if profile.generation is None:
            fused = (ws.float_onnx, ws.export_record["fusions"])
        # the export unfused, measured in the same rounds: what fusion and compression gain
        plain = Path(ws.plain_onnx)
        recipes.append(Recipe(PLAIN, plain.read_bytes(), evaluate_quality(plain, ws.data)[0]))
    for variant in recipe_variants(profile):
        check()
        try:
            if fused is None and variant != "fp16":  # one optimizer run for the CPU variants
                fused = fused_graph(source, ws.scratch / "recipe", attention)
            path, info = build_recipe(
                variant, source, ws.ctx, ws.scratch / "recipe" / variant, attention, fused
            )
            accuracy, _ = evaluate_quality(path, ws.data)
        except Exception as e:  # the search's results stand without it
            log.warning(
                "%s: standard recipe %s could not be built (%s: %s)",
                profile.name,
                variant,
                type(e).__name__,
                str(e).splitlines()[0] if str(e) else "",
            )
            continue
        recipes.append(Recipe(variant, path.read_bytes(), accuracy, info))
    return recipes


def record(
    recipes: list[Recipe],
    results: list[LatencyResult],
    baseline: dict[str, float],
    config: SearchConfig,
) -> dict[str, Any]:
    """What the study keeps: per variant its quality (accuracy or perplexity), latency (ratio x
    the search's reference), interval, speedup and whether it meets the search's constraints."""
    quality = config.quality.name
    out = {}
    for r, lat in zip(recipes, results, strict=True):
        latency_ms = lat.ratio * baseline["latency_ms"]
        feasible = config.feasible(baseline[quality], r.accuracy, latency_ms)
        out[r.variant] = {
            quality: r.accuracy,
            "latency_ms": latency_ms,
            "ratio": lat.ratio,
            "ratio_ci": list(lat.ratio_ci),
            "speedup": lat.speedup,
            "feasible": feasible,
            **r.info,
        }
    return out


def metrics(study: optuna.Study) -> dict[str, float]:
    """The recipe's speedups, its best feasible one, and tightfit's over it (same rounds)."""
    recipe = study.user_attrs.get(ATTR)
    if not recipe:
        return {}
    quality = objectives.quality_of(study.metric_names).name
    out: dict[str, float] = {}
    for variant, r in recipe.items():
        key = variant.replace("-", "_")
        out[f"recipe_{key}_speedup"] = float(r["speedup"])
        out[f"recipe_{key}_{quality}"] = float(r[quality])
    feasible = [float(r["speedup"]) for v, r in recipe.items() if r["feasible"] and v != PLAIN]
    best = best_joint_speedup(study)
    if best is not None:
        out["best_feasible_speedup_joint"] = best
        if PLAIN in recipe:  # the baseline is fused: tightfit's best over the plain export
            out["speedup_over_export"] = best / float(recipe[PLAIN]["speedup"])
    if not feasible:
        return out
    out["recipe_best_speedup"] = max(feasible)
    if best is not None:
        out["speedup_over_recipe"] = best / out["recipe_best_speedup"]
    return out


def best_joint_speedup(study: optuna.Study) -> float | None:
    """The fastest feasible trial's speedup as measured in the joint re-measurement (the rounds
    the recipe ran in)."""
    joint = study.user_attrs.get(StudyAttr.REMEASURED_JOINTLY)
    if not joint:
        return None
    feasible = {t.number for t in study.get_trials(deepcopy=False) if is_feasible(t)}
    reference = float(study.user_attrs[StudyAttr.BASELINE_LATENCY_MS])
    speedups = [
        reference / float(joint["latency_ms"][str(n)])
        for n in joint["trials"]
        if n in feasible and str(n) in joint["latency_ms"]
    ]
    return max(speedups) if speedups else None
