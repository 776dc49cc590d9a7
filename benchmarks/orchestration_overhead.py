"""What orchestration costs: `python benchmarks/orchestration_overhead.py [--n-trials N]`.

Runs the example search (examples/digits.yaml, local Ray, MLflow, Optuna journal) with 1, 2 and
4 evaluations in flight, each in a fresh work directory sharing one trained model, and reports:

- **orchestration per trial**: the driver's own time (sampling, dispatch, telling Optuna,
  logging to MLflow, the Pareto tags), i.e. the loop's wall time minus the time it waited on
  Ray, divided by the trials; and its **share of the search's wall time**;
- **dispatch latency**: from handing a compression task to Ray to a worker starting it (median;
  with more in flight than CPUs it includes waiting for a free CPU);
- the mean **evaluation time** per trial (compression and accuracy, plus the measurement), so
  the share can be read against the issue's "evaluations of 5 s or more".

Writes benchmarks/results/orchestration_overhead.{json,md} with the machine fingerprint.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._fingerprint import fingerprint  # noqa: E402
from tightfit.config import load_config  # noqa: E402
from tightfit.runs import run_search  # noqa: E402


def one_search(config_path: str, n_trials: int, concurrency: int, tmp: Path) -> dict:
    from mlflow import MlflowClient

    workdir = tmp / f"work-{concurrency}"
    cache = tmp / "model-cache"  # the example network is trained once, for every run
    if cache.exists():
        shutil.copytree(cache, workdir / "cache")
    config = load_config(
        config_path,
        {
            "n_trials": n_trials,
            "concurrency": concurrency,
            "workdir": str(workdir),
            "name": f"overhead-{concurrency}",
            # every trial is a full evaluation: no cache hits, nothing pre-screened
            "latency": {"cache": False, "prescreen": False},
        },
    )
    t0 = time.perf_counter()
    outcome = run_search(config)
    wall = time.perf_counter() - t0
    if not cache.exists():
        shutil.copytree(workdir / "cache", cache)
    [profile] = outcome.profiles
    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    exp = client.get_experiment_by_name(config.name)
    [summary] = client.search_runs(
        [exp.experiment_id], filter_string="tags.`tightfit.kind` = 'summary'"
    )
    m = summary.data.metrics
    runs = client.search_runs(
        [exp.experiment_id],
        filter_string="tags.`tightfit.kind` = 'trial' and tags.`tightfit.status` = 'complete'",
        max_results=1000,
    )
    evaluation = [r.data.metrics["compress_s"] + r.data.metrics["latency_measure_s"] for r in runs]
    dispatch = [r.data.metrics["dispatch_s"] for r in runs if "dispatch_s" in r.data.metrics]
    n = profile.n_complete
    return {
        "concurrency": concurrency,
        "n_trials": n,
        "n_failed": profile.n_failed,
        "command_wall_s": round(wall, 1),
        "loop_wall_s": round(m["search_wall_s"], 1),
        "orchestration_s": round(m["orchestration_s"], 2),
        "orchestration_ms_per_trial": round(1000 * m["orchestration_s"] / n, 1),
        "orchestration_share": round(m["orchestration_share"], 4),
        "dispatch_ms_median": round(1000 * statistics.median(dispatch), 1) if dispatch else None,
        "evaluation_s_mean": round(statistics.mean(evaluation), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n-trials", type=int, default=16)
    parser.add_argument("--config", default=str(ROOT / "examples" / "digits.yaml"))
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4])
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="tightfit-overhead-"))
    rows = [one_search(args.config, args.n_trials, c, tmp) for c in args.concurrency]
    result = {"config": Path(args.config).name, "runs": rows, "machine": fingerprint()}
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "orchestration_overhead.json").write_text(json.dumps(result, indent=2))
    mach = result["machine"]
    lines = [
        f"# Orchestration overhead: {result['config']}, {args.n_trials} trials per run",
        "",
        f"Machine: {mach['cpu']} ({mach['cpu_count']} cores), ray {mach.get('ray', '?')}, "
        f"optuna {mach.get('optuna', '?')}, mlflow {mach.get('mlflow', '?')}",
        "",
        "Orchestration = the driver's own time (sampling, dispatch, tell, MLflow logging); "
        "share = of the search loop's wall time. Every trial fully evaluated (no latency cache, "
        "no pre-screening).",
        "",
        "| in flight | trials | loop wall (s) | orchestration per trial (ms) | share of wall "
        "| dispatch latency, median (ms) | evaluation per trial (s) |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['concurrency']} | {r['n_trials']} | {r['loop_wall_s']:.0f} "
            f"| {r['orchestration_ms_per_trial']:.0f} | {r['orchestration_share']:.1%} "
            f"| {r['dispatch_ms_median']} | {r['evaluation_s_mean']:.1f} |"
        )
    (out / "orchestration_overhead.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
