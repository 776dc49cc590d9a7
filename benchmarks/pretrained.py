"""Searches on real pretrained models, against uniform int8:
`python benchmarks/pretrained.py [--models fashion-mnist,efficientnet-lite0,minilm] [--n-trials 60]`.

For each model, runs its shipped example config (examples/<model>.yaml: cpu-ort, 2 threads,
batch 1, sequence length 128 for MiniLM) for ``--n-trials`` trials, then measures uniform int8
(every quantizable layer at 8 bits, nothing else: the usual first thing a user tries; static Q/DQ
and dynamic int8) with the same evaluator. Writes
benchmarks/results/pretrained.{json,md} after every model (a partial run keeps what it finished;
rows of models not in ``--models`` are kept from the last run):
baseline latency, and for the fastest point of the front within the quality constraint its
speedup, size reduction and knobs. A rerun with the same --workdir resumes finished searches.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._fingerprint import fingerprint, machine_line  # noqa: E402
from tightfit.config import (  # noqa: E402
    LowRankSpace,
    PruneSpace,
    QuantizeSpace,
    SearchConfig,
    SpaceSpec,
    load_config,
)
from tightfit.kernels import discover_units  # noqa: E402
from tightfit.runs import run_search  # noqa: E402
from tightfit.search import recipe_metrics  # noqa: E402
from tightfit.spaces import CompressionSpace  # noqa: E402
from tightfit.workspace import Setup, evaluate_candidate, workspace  # noqa: E402

MODELS = {
    "fashion-mnist": ("fashion-mnist.yaml", "test accuracy within 1 point", 2.0),
    "efficientnet-lite0": ("efficientnet-lite0.yaml", "top-1 agreement >= 98%", 1.5),
    "minilm": ("minilm.yaml", "probe accuracy within 1 point", 2.0),
}
RESULTS = ROOT / "benchmarks" / "results"


def uniform_int8(config: SearchConfig, workdir: Path, baseline: dict, dynamic: bool) -> dict:
    """Every quantizable layer at int8 (static Q/DQ, or dynamic MatMul/Gemm), measured like a
    trial: latency against the baseline's reference latency of the search."""
    [profile] = config.hardware_profiles()
    # every layer, including those the example's search leaves alone (model.ignore)
    config = config.model_copy(update={"model": config.model.model_copy(update={"ignore": []})})
    profile = profile.with_int8_format("dynamic" if dynamic else "static")
    setup = Setup.of(config, profile, workdir)
    ws = workspace(setup)
    # int8 on every layer whether or not the example's own space searches bits
    only_int8 = SpaceSpec(
        prune=PruneSpace(enabled=False),
        lowrank=LowRankSpace(enabled=False),
        quantize=QuantizeSpace(bits=[32, 8]),
    )
    space = CompressionSpace(discover_units(ws.model, ws.ctx, only_int8), ws.model_id)
    candidate = space.uniform(bits=8)
    result = evaluate_candidate(setup, candidate, baseline_ref_ms=baseline["latency_ms"])
    drop = baseline["accuracy"] - result.accuracy
    return {
        "format": "dynamic" if dynamic else "static",
        "accuracy": result.accuracy,
        "accuracy_drop": drop,
        "feasible": config.loss_excess(baseline["accuracy"], result.accuracy) <= 0,
        "latency_ms": result.latency.latency_ms,
        "speedup": result.latency.speedup,
        "size_mb": result.size_mb,
        "size_reduction": baseline["size_mb"] / result.size_mb,
    }


def run_model(
    name: str, n_trials: int, root: Path, with_uniform: bool = True, sampler: str | None = None
) -> dict[str, Any]:
    file, quality, target = MODELS[name]
    workdir = root / (f"{name}-{sampler}" if sampler else name)
    overrides: dict[str, Any] = {"n_trials": n_trials, "workdir": str(workdir)}
    if sampler:
        overrides["sampler"] = {"name": sampler}
    config = load_config(ROOT / "examples" / file, overrides)
    t0 = time.perf_counter()
    outcome = run_search(config)
    search_s = time.perf_counter() - t0
    [profile] = outcome.profiles
    base = profile.baseline
    front = profile.front
    within = front["accuracy"].map(lambda a: config.loss_excess(base["accuracy"], a) <= 0)
    ok = front[within.astype(bool) & ~front["baseline"]]
    best = ok.loc[ok["speedup"].idxmax()].to_dict() if len(ok) else None
    extras = {}
    if best is not None:
        trial = profile.study.trials[int(best["trial"])]
        extras = trial.user_attrs.get("metrics", {})
        best["size_reduction"] = base["size_mb"] / best["size_mb"]
    uniform = (
        [uniform_int8(config, workdir, base, dynamic=d) for d in (False, True)]
        if with_uniform
        else []
    )
    study = profile.study
    return {
        "machine": fingerprint(),
        "export": study.user_attrs.get("export", {}),
        "recipe": study.user_attrs.get("recipe", {}),
        "recipe_metrics": recipe_metrics(study),
        "model": name,
        "sampler": config.sampler.name,
        "config": file,
        "quality_constraint": quality,
        "target_speedup": target,
        "n_trials": profile.n_complete,
        "n_failed": profile.n_failed,
        "search_wall_s": round(search_s, 1),
        "baseline": base,
        "baseline_metrics": profile.study.user_attrs.get("baseline_metrics", {}),
        "int8_format": profile.study.user_attrs.get("int8_format"),
        "best": best,
        "best_metrics": extras,
        "uniform_int8": uniform,
        "front": front[["trial", "accuracy", "latency_ms", "size_mb", "speedup", "knobs"]].to_dict(
            "records"
        ),
    }


def _row(r: dict[str, Any]) -> tuple[str, str]:
    """A row's identity: the model and the sampler (rows from before samplers: tpe)."""
    return r["model"], r.get("sampler", "tpe")


def _label(r: dict[str, Any]) -> str:
    return r["model"] if _row(r)[1] == "tpe" else f"{r['model']} (sampler {_row(r)[1]})"


def merged(new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows of this run, plus the rows of earlier runs for models this run did not redo (one
    model per invocation is how a 2-core machine gets through all three)."""
    path = RESULTS / "pretrained.json"
    saved = json.loads(path.read_text()) if path.exists() else {"models": []}
    old = saved["models"]
    for r in old:  # rows from before rows named their machine: the file's
        r.setdefault("machine", saved.get("machine", {}))
    done = {_row(r) for r in new}
    rows = [r for r in old if _row(r) not in done] + new
    return sorted(rows, key=lambda r: list(MODELS).index(r["model"]))


def write(results: list[dict[str, Any]]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    results = merged(results)
    machine = fingerprint()
    (RESULTS / "pretrained.json").write_text(
        json.dumps({"machine": machine, "models": results}, indent=2, default=float)
    )
    lines = [
        "# Searches on real pretrained models (cpu-ort: ONNX Runtime CPU, 2 threads, batch 1)",
        "",
        "Command: `python benchmarks/pretrained.py --models <model>`, one model per run; each "
        "row's numbers come from one run on one machine:",
        "",
        *[f"- {_label(r)}: {machine_line(r['machine'])}" for r in results],
        "",
        "| model | quality constraint | trials | baseline accuracy | baseline latency | best speedup (target) | size reduction | accuracy | uniform int8 | knobs of the best |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    for r in results:
        b, best = r["baseline"], r["best"]
        uniform = "; ".join(
            f"{u['format']}: {u['speedup']:.2f}x, {u['size_reduction']:.2f}x smaller, "
            f"accuracy {u['accuracy']:.4f}{'' if u['feasible'] else ' (breaks the constraint)'}"
            for u in r["uniform_int8"]
        )
        if best is None or best.get("baseline"):  # the uncompressed model is no answer
            cells = ["none feasible (only the baseline)", "", "", "—"]
        else:
            met = "met" if best["speedup"] >= r["target_speedup"] else "missed"
            cells = [
                f"**{best['speedup']:.2f}x** (≥{r['target_speedup']}x: {met})",
                f"{best['size_reduction']:.2f}x",
                f"{best['accuracy']:.4f}",
                str(best["knobs"]),
            ]
        lines.append(
            f"| {_label(r)} | {r['quality_constraint']} | {r['n_trials']} ({r['n_failed']} failed) | "
            f"{b['accuracy']:.4f} | {b['latency_ms']:.2f} ms | {cells[0]} | {cells[1]} | {cells[2]} | "
            f"{uniform} | {cells[3]} |"
        )
    lines += [
        "",
        "Beside the standard recipe, measured in the same interleaved rounds at the end of the "
        "search (speedups over the search's baseline: the fused fp32 graph where the model is a "
        "transformer, `graph_fusion: auto`; the plain export is the unfused graph the exporter "
        "wrote):",
        "",
        "| model | fusions | plain export | recipe variants | recipe, best feasible | tightfit, best feasible | over the recipe | over the plain export |",
        "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        recipe, m = r.get("recipe") or {}, r.get("recipe_metrics") or {}
        if not recipe:
            continue
        plain = recipe.get("export")
        variants = "; ".join(
            f"{v} {x['speedup']:.2f}x ({x['accuracy']:.4f}{'' if x['feasible'] else ', infeasible'})"
            for v, x in recipe.items()
            if v != "export"
        )

        plain_cell = f"{plain['speedup']:.2f}x" if plain else "= baseline"

        def cell(key: str, metrics: dict = m) -> str:
            return f"{metrics[key]:.2f}x" if key in metrics else "—"

        lines.append(
            f"| {_label(r)} | {r.get('export', {}).get('fusions', {})} | "
            f"{plain_cell} | {variants} | "
            f"{cell('recipe_best_speedup')} | {cell('best_feasible_speedup_joint')} | "
            f"**{cell('speedup_over_recipe')}** | "
            f"{cell('speedup_over_export') if plain else cell('best_feasible_speedup_joint')} |"
        )
    lines += ["", "Extra metrics (baseline → best point):", ""]
    for r in results:
        for k, v in r["baseline_metrics"].items():
            got = r["best_metrics"].get(k) if not (r["best"] or {}).get("baseline") else None
            lines.append(f"- {_label(r)} {k}: {v:.4f} → {got:.4f}" if got is not None else "")
    (RESULTS / "pretrained.md").write_text("\n".join(line for line in lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--n-trials", type=int, default=60)
    parser.add_argument("--workdir", default=str(ROOT / "runs" / "pretrained"))
    parser.add_argument(
        "--no-uniform",
        action="store_true",
        help="skip the separate uniform int8 evaluations (the recipe's int8 rows cover them)",
    )
    parser.add_argument(
        "--sampler", default=None, help="the example's sampler.name replaced (a row of its own)"
    )
    args = parser.parse_args()
    results = []
    for name in args.models.split(","):
        results.append(
            run_model(name, args.n_trials, Path(args.workdir), not args.no_uniform, args.sampler)
        )
        write(results)


if __name__ == "__main__":
    main()
