"""The example search end to end, timed: `python benchmarks/digits_search.py [--n-trials N]`.

Runs examples/digits.yaml in a fresh work directory (local Ray, MLflow, Optuna journal), exports
the knee, and writes benchmarks/results/digits_search.{json,md} with the machine fingerprint:
wall time, trials, the front, the best feasible speedup, and logged vs re-measured numbers.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._fingerprint import fingerprint  # noqa: E402
from tightfit.config import load_config  # noqa: E402
from tightfit.runs import run_search  # noqa: E402
from tightfit.runs.export import export  # noqa: E402
from tightfit.runs.summary import contention_metrics  # noqa: E402
from tightfit.search import joint_metrics, latency_reuse_metrics, recipe_metrics  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n-trials", type=int, default=40)
    parser.add_argument("--config", default=str(ROOT / "examples" / "digits.yaml"))
    parser.add_argument(
        "--no-prescreen", action="store_true", help="measure every candidate (for comparison)"
    )
    parser.add_argument("--tag", default="", help="suffix of the result files")
    parser.add_argument("--keep", default=None, help="run in this directory and keep it")
    args = parser.parse_args()
    tmp = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="tightfit-bench-"))
    latency = {
        "cache_dir": str(tmp / "latency-cache"),
        "prescreen": not args.no_prescreen,
        "remeasure": "measured",  # every measured candidate again, together, at the end
    }
    config = load_config(
        args.config,
        {"n_trials": args.n_trials, "workdir": str(tmp / "work"), "latency": latency},
    )
    t0 = time.perf_counter()
    outcome = run_search(config)
    search_s = time.perf_counter() - t0
    [profile] = outcome.profiles
    t1 = time.perf_counter()
    [knee] = export(outcome.workdir, pick="knee", out=tmp / "engines")
    export_s = time.perf_counter() - t1
    front = profile.front
    feasible_within_1pt = front[front["accuracy"] >= profile.baseline["accuracy"] - 0.01]
    result = {
        "config": Path(args.config).name,
        "n_trials": profile.n_complete,
        "n_failed": profile.n_failed,
        "search_wall_s": round(search_s, 1),
        "export_wall_s": round(export_s, 1),
        "baseline": profile.baseline,
        "front": front[
            ["trial", "accuracy", "latency_ms", "latency_ms_joint", "size_mb", "speedup", "knobs"]
        ].to_dict("records"),
        "best_speedup_within_1pt": float(feasible_within_1pt["speedup"].max())
        if len(feasible_within_1pt)
        else None,
        "knee": {
            "trial": knee.trial,
            "logged": knee.logged,
            "measured": knee.measured,
            "latency_change": knee.latency_change,
            "accuracy_change": knee.quality_change,
            "ratio_logged": knee.ratio_logged,
            "ratio_now": knee.ratio_now,
            "agrees": knee.agrees,
            "expected": knee.expected,
            "repeat_error": knee.repeat_error,
        },
        "aa_check": profile.aa_check,
        "contention": contention_metrics(profile.study),
        "latency_reuse": latency_reuse_metrics(profile.study),
        "remeasured_jointly": joint_metrics(profile.study),
        "recipe": profile.study.user_attrs.get("recipe"),
        "recipe_metrics": recipe_metrics(profile.study),
        "prescreen": not args.no_prescreen,
        "machine": fingerprint(),
    }
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    name = f"digits_search{args.tag}"
    (out / f"{name}.json").write_text(json.dumps(result, indent=2, default=float))
    lines = [
        f"# {config.name} search ({', '.join(config.profiles)})",
        "",
        f"Machine: {result['machine']['cpu']} ({result['machine']['cpu_count']} cores; {result['machine']['cpu_flags']}), "
        f"onnxruntime {result['machine']['onnxruntime']}, torch {result['machine']['torch']}"
        + (
            f"; GPU {profile.study.user_attrs['environment'].get('gpu')}"
            if "gpu" in profile.study.user_attrs.get("environment", {})
            else ""
        ),
        "",
        f"- {result['n_trials']} trials ({result['n_failed']} failed) in {search_s:.0f} s; export of the knee {export_s:.0f} s",
        f"- baseline: accuracy {profile.baseline['accuracy']:.4f}, latency {profile.baseline['latency_ms']:.3f} ms, "
        f"size {profile.baseline['size_mb']:.2f} MB",
        f"- best speedup within 1 point of the baseline's accuracy: {result['best_speedup_within_1pt']:.2f}x",
        f"- knee (trial {knee.trial}): accuracy {knee.logged['accuracy']:.4f} -> {knee.measured['accuracy']:.4f}, "
        f"latency {knee.logged['latency_ms']:.3f} -> {knee.measured['latency_ms']:.3f} ms ({knee.latency_change:+.1%})",
        _ratios_line(knee),
        _aa_line(profile.aa_check),
        "- rounds dropped because other processes took the pinned CPUs: "
        + ", ".join(f"{k} {v:.3g}" for k, v in result["contention"].items()),
        f"- latency pre-screening {'on' if result['prescreen'] else 'off'}: "
        + ", ".join(f"{k} {v:.3g}" for k, v in result["latency_reuse"].items()),
        "- every measured candidate measured again, together, at the end (latency.remeasure: "
        "measured): " + ", ".join(f"{k} {v:.3g}" for k, v in result["remeasured_jointly"].items()),
        _recipe_line(result),
        "",
        "The front, then the standard recipe's variants (built from the baseline), all measured "
        "together in the same rounds at the end of the search (the last two columns):",
        "",
        "| trial | accuracy | latency_ms | size_mb | speedup | latency_ms measured together | "
        "speedup measured together | knobs |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    reference = profile.baseline["latency_ms"]
    for row in result["front"]:
        joint = row["latency_ms_joint"]
        missing = joint != joint or joint is None
        lines.append(
            f"| {row['trial']} | {row['accuracy']:.4f} | {row['latency_ms']:.3f} | "
            f"{row['size_mb']:.2f} | {row['speedup']:.2f}x | "
            f"{'' if missing else f'{joint:.3f}'} | "
            f"{'' if missing else f'{reference / joint:.2f}x'} | {row['knobs']} |"
        )
    for variant, r in (result["recipe"] or {}).items():
        lines.append(
            f"| recipe: {variant} | {r['accuracy']:.4f} | | | | {r['latency_ms']:.3f} | "
            f"{r['speedup']:.2f}x | standard recipe{'' if r['feasible'] else ' (infeasible)'} |"
        )
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    if not args.keep:
        shutil.rmtree(tmp, ignore_errors=True)


def _ratios_line(knee) -> str:
    """The knee's latency ratio to the baseline as logged and as re-measured at export."""
    if knee.ratio_logged is None or knee.ratio_now is None or knee.expected is None:
        return "- knee latency ratio: no logged interval to compare with"
    (lo, lo_l, lo_h), (now, now_l, now_h) = knee.ratio_logged, knee.ratio_now
    exp_l, exp_h = knee.expected
    repeat = "none" if knee.repeat_error is None else f"{knee.repeat_error:.1%}"
    return (
        f"- knee latency ratio to the baseline: logged {lo:.3f} [{lo_l:.3f}, {lo_h:.3f}], "
        f"re-measured at export {now:.3f} [{now_l:.3f}, {now_h:.3f}]; a re-measurement of the "
        f"logged ratio lands in [{exp_l:.3f}, {exp_h:.3f}] (both intervals' noise, or the "
        f"search's repeat error {repeat} where wider): the re-measured ratio is "
        f"{'INSIDE' if knee.agrees else 'OUTSIDE'} it; inside the logged 95% interval itself: "
        f"{'yes' if lo_l <= now <= lo_h else 'no'}"
    )


def _recipe_line(result) -> str:
    m = result["recipe_metrics"]
    if not result["recipe"]:
        return "- standard recipe: not measured"
    if "speedup_over_recipe" not in m:
        return (
            "- standard recipe: measured (below), no tightfit or recipe point within the constraint"
        )
    return (
        f"- standard recipe, best feasible: {m['recipe_best_speedup']:.2f}x; tightfit's best "
        f"feasible in the same rounds: {m['best_feasible_speedup_joint']:.2f}x, "
        f"**{m['speedup_over_recipe']:.2f}x over the recipe**"
    )


def _aa_line(aa) -> str:
    if not aa:
        return "- A/A check: none (a study begun before it existed)"
    return (
        f"- A/A check (the baseline against itself, once per search): ratio {aa['ratio']:.3f} "
        f"[{aa['ratio_ci'][0]:.3f}, {aa['ratio_ci'][1]:.3f}], error {aa['error']:.1%} "
        f"(tolerance {aa['tolerance']:.0%}; {'EXCEEDED' if aa['exceeded'] else 'within'}), "
        f"{aa['rounds']} rounds, {aa['rounds_contended']} dropped for contention"
    )


if __name__ == "__main__":
    main()
