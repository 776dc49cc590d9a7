"""Sample efficiency of the search strategies: `python benchmarks/search_efficiency.py`.

On the shipped digits example (examples/digits.yaml), each strategy runs as a whole search
(local Ray, Optuna journal, MLflow) for 3 seeds:

- ``default``: what a user gets without choosing (TPE, seeds from the baselines and the
  sensitivity scan, staged evaluation, BatchNorm recalibration);
- the samplers ``nsga2``, ``qmc`` and ``random``, with the default seeds and scan off (random
  search is the neutral baseline: no seeds, no scan);
- the baselines ``uniform`` and ``global_magnitude`` run alone;
- ``default-no-recovery``: the default without BatchNorm recalibration and bias correction;
- ``default-distill``: the default with distillation from the baseline (100 steps per pruned or
  factorized candidate, the scan's probes included; one seed, it is the slowest arm).

Then the effect of each recovery step on the accuracy of fixed candidates (uniform pruning and
factorization levels, float and int8), without latency: none, BatchNorm recalibration, + bias
correction (forced on), + distillation; and bias correction on int8 with one scale per tensor.

Random search gets ``--random-trials`` (200), the others ``--trials`` (50). Hypervolume (the
front of accuracy, latency, size, each relative to the baseline; reference point = baseline)
is recomputed after every finished trial from the study. Writes
benchmarks/results/search_efficiency.{json,md,png} with the machine fingerprint.

Latency is measured on ``cpu-ort`` with a shortened protocol (``--rounds``) so the whole
benchmark fits in about an hour on 2 cores; every strategy is measured the same way. Each
search has its own work directory under ``--workdir``: a rerun resumes the unfinished ones.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._fingerprint import fingerprint  # noqa: E402
from tightfit.config import load_config  # noqa: E402
from tightfit.hardware_profiles import get_profile  # noqa: E402
from tightfit.runs import run_search  # noqa: E402
from tightfit.runs.pareto import hypervolume_history, trials_frame  # noqa: E402

SEEDS = (0, 1, 2)

#: name -> config overrides (n_trials is set per strategy).
STRATEGIES: dict[str, dict[str, Any]] = {  # in the order they run
    "default": {},
    "random": {
        "sampler": {"name": "random"},
        "seeds": {"uniform": 0, "global_magnitude": 0},
        "sensitivity": {"enabled": False},
    },
    "uniform": {"strategy": "uniform"},
    "global_magnitude": {"strategy": "global_magnitude"},
    "default-no-recovery": {"recovery": {"batchnorm": False, "bias_correction": False}},
    "qmc": {"sampler": {"name": "qmc"}},
    "nsga2": {"sampler": {"name": "nsga2", "population_size": 16}},
    "default-distill": {"recovery": {"distill": {"enabled": True}}},
}
SEEDS_OF = {"default-distill": (0,)}
SWEEPS = {"uniform", "global_magnitude"}


def profile_file(where: Path, rounds: int) -> Path:
    base = get_profile("cpu-ort")
    measurement = base.measurement.model_copy(
        update={"rounds": rounds, "max_rounds": 2 * rounds, "warmup_s": 0.1}
    )
    path = where / "cpu-ort-bench.yaml"
    path.write_text(
        base.model_copy(update={"name": "cpu-ort-bench", "measurement": measurement}).to_yaml()
    )
    return path


def run_one(name: str, seed: int, n_trials: int, workdir: Path, profile: Path) -> dict[str, Any]:
    overrides = {
        **STRATEGIES[name],
        "name": f"eff-{name}-s{seed}",
        "seed": seed,
        "n_trials": n_trials,
        "profiles": [str(profile)],
        "workdir": str(workdir / f"{name}-s{seed}"),
        # no reuse across searches: each strategy pays for its own measurements
        "latency": {"cache": False},
    }
    config = load_config(ROOT / "examples" / "digits.yaml", overrides)
    # the example network, trained once for every search
    trained = workdir / "trained"
    if not list(trained.glob("*.pt")):
        from tightfit.task import load_model

        load_model(config.model, cache_dir=trained)
    cache = workdir / f"{name}-s{seed}" / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    for f in trained.glob("*.pt"):
        if not (cache / f.name).exists():
            shutil.copy(f, cache / f.name)
    t0 = time.perf_counter()
    outcome = run_search(config)
    wall = time.perf_counter() - t0
    [p] = outcome.profiles
    objectives = list(config.objectives)
    history = hypervolume_history(p.study, p.baseline, objectives)
    frame = trials_frame(p.study)
    done = frame[frame["state"] == "complete"]
    best = {}
    for budget in (50, n_trials):
        numbers = set(frame.sort_values("trial")["trial"].head(budget))
        ok = done[done["feasible"] & done["trial"].isin(numbers)]
        best[budget] = float(ok["speedup"].max()) if len(ok) else None
    stages = frame["state"].value_counts().to_dict()
    return {
        "strategy": name,
        "seed": seed,
        "n_trials": len(history),
        "hypervolume": history,
        "best_feasible_speedup": best,
        "stages": stages,
        "wall_s": round(wall, 1),
        "baseline": p.baseline,
    }


def at(history: list[float], n: int) -> float:
    return history[min(n, len(history)) - 1] if history else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--random-trials", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workdir", default=str(ROOT / "runs" / "search-efficiency"))
    parser.add_argument("--only", nargs="*", help="strategies to run (default: all)")
    args = parser.parse_args()
    workdir = Path(args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    profile = profile_file(workdir, args.rounds)
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    raw_path = workdir / "results.json"
    results: dict[str, dict[str, Any]] = (
        json.loads(raw_path.read_text()) if raw_path.exists() else {}
    )
    for name in args.only or list(STRATEGIES):
        n = args.random_trials if name == "random" else args.trials
        for seed in SEEDS_OF.get(name, SEEDS):
            key = f"{name}-s{seed}"
            done = results.get(key, {}).get("n_trials", 0)
            if done >= n or (done and name in SWEEPS):  # a sweep may have fewer candidates
                continue
            print(f"{key}: {n} trials", flush=True)
            results[key] = run_one(name, seed, n, workdir, profile)
            raw_path.write_text(json.dumps(results, indent=1, default=float))
    recovery_path = workdir / "recovery.json"
    if not recovery_path.exists():
        print("recovery effect on fixed candidates", flush=True)
        recovery_path.write_text(json.dumps(recovery_effect(workdir), indent=1))
    recovery = json.loads(recovery_path.read_text())
    write_report(results, args.trials, out, recovery, workdir)


def best_feasible_speedup(workdir: Path, key: str, n: int) -> float | None:
    """The best speedup with accuracy within the limit among the first ``n`` finished trials
    of the search ``key`` (read back from its Optuna journal)."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    storage = JournalStorage(JournalFileBackend(str(workdir / key / "optuna.journal")))
    study = optuna.load_study(study_name=f"eff-{key}:cpu-ort-bench", storage=storage)
    frame = trials_frame(study)
    first = set(frame.sort_values("trial")["trial"].head(n))
    ok = frame[(frame["state"] == "complete") & frame["feasible"] & frame["trial"].isin(first)]
    return float(ok["speedup"].max()) if len(ok) else None


def equal_trials(results: dict[str, dict[str, Any]], workdir: Path) -> list[str]:
    """Default vs each baseline sweep at the sweep's length (its distinct candidates), per seed."""
    lines = [
        "",
        "## Best feasible speedup at equal trials (per seed; a sweep ends at its distinct "
        "candidates)",
        "",
        "| baseline | seed | trials | baseline's best | default's best at as many trials |",
        "|---|---|---|---|---|",
    ]
    for name in sorted(SWEEPS):
        for seed in SEEDS:
            run = results.get(f"{name}-s{seed}")
            if not run or f"default-s{seed}" not in results:
                continue
            n = run["n_trials"]
            mine = best_feasible_speedup(workdir, f"{name}-s{seed}", 10**9)  # its whole sweep
            default = best_feasible_speedup(workdir, f"default-s{seed}", n)
            fmt = lambda v: "none feasible" if v is None else f"{v:.2f}x"  # noqa: E731
            lines.append(f"| {name} | {seed} | {n} | {fmt(mine)} | {fmt(default)} |")
    return lines


def recovery_effect(workdir: Path) -> list[dict[str, Any]]:
    """Accuracy of fixed uniform candidates under each recovery step (no search, no latency)."""
    from dataclasses import replace

    from tightfit.config import DistillSpec, RecoverySpec
    from tightfit.evaluators import evaluate_accuracy
    from tightfit.kernels import compress, discover_units
    from tightfit.spaces import Candidate
    from tightfit.workspace import Setup, Workspace

    config = load_config(ROOT / "examples" / "digits.yaml", {})
    profile = get_profile("cpu-ort")
    ws = Workspace(Setup(config=config, profile=profile, cache_dir=str(workdir / "trained")))
    units = discover_units(ws.model, ws.ctx, config.space)
    distill = DistillSpec(enabled=True)  # the defaults: 100 steps, lr 1e-4
    variants = {
        "none": RecoverySpec(batchnorm=False, bias_correction=False),
        "batchnorm": RecoverySpec(bias_correction=False),
        "batchnorm+bias_correction": RecoverySpec(bias_correction=True),
        "batchnorm+distill": RecoverySpec(bias_correction=False, distill=distill),
    }
    per_tensor = profile.model_copy(
        update={"quantization": profile.quantization.model_copy(update={"per_channel": False})}
    )
    rows = [{"candidate": "baseline", "accuracy": evaluate_accuracy(ws.baseline_onnx, ws.data)}]
    plans = [(r, f, b) for r in (0.25, 0.375, 0.5) for f in (1.0, 0.5) for b in (32, 8)]
    plans.append((0.0, 1.0, 8))
    for ratio, fraction, bits in plans:
        candidate = Candidate(
            base_model=ws.model_id,
            prune={u.path: ratio for u in units if u.knob == "prune_ratio"},
            rank={u.path: fraction for u in units if u.knob == "rank"},
            bits={u.path: bits for u in units if u.knob == "bits" and bits != 32},
        )
        row: dict[str, Any] = {"candidate": f"prune {ratio}, rank {fraction}, {bits}-bit"}
        for name, recovery in variants.items():
            if name == "batchnorm+bias_correction" and bits == 32:
                continue
            ctx = replace(ws.ctx, recovery=recovery)
            built = compress(ws.model, candidate, ctx, ws.scratch / "recovery")
            row[name] = round(evaluate_accuracy(built.onnx_path, ws.data), 4)
        if bits == 8:  # int8 with one scale per tensor: coarse, where bias correction matters
            for on in (False, True):
                ctx = replace(ws.ctx, profile=per_tensor, recovery=RecoverySpec(bias_correction=on))
                built = compress(ws.model, candidate, ctx, ws.scratch / "recovery")
                key = "per_tensor_int8" + ("+bias_correction" if on else "")
                row[key] = round(evaluate_accuracy(built.onnx_path, ws.data), 4)
        print(row, flush=True)
        rows.append(row)
    return rows


def write_report(
    results: dict[str, dict[str, Any]],
    budget: int,
    out: Path,
    recovery: list[dict[str, Any]],
    workdir: Path,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    by_name: dict[str, list[dict[str, Any]]] = {}
    for r in results.values():
        by_name.setdefault(r["strategy"], []).append(r)
    rows = []
    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=110)
    for name, runs in by_name.items():
        longest = max(len(r["hypervolume"]) for r in runs)
        curves = np.array([[at(r["hypervolume"], n) for n in range(1, longest + 1)] for r in runs])
        mean = curves.mean(axis=0)
        ax.plot(range(1, longest + 1), mean, label=name)
        ax.fill_between(range(1, longest + 1), curves.min(axis=0), curves.max(axis=0), alpha=0.15)
        speed = [
            r["best_feasible_speedup"].get(str(budget), r["best_feasible_speedup"].get(budget))
            for r in runs
        ]
        speed = [s for s in speed if s is not None]
        rows.append(
            {
                "strategy": name,
                "seeds": len(runs),
                "trials": longest,
                **{
                    f"hv@{n}": round(float(np.mean([at(r["hypervolume"], n) for r in runs])), 4)
                    for n in (25, 50, 100, 200)
                    if n <= longest
                },
                f"best_feasible_speedup@{budget}": round(float(np.mean(speed)), 3)
                if speed
                else None,
                "speedup_per_seed": [round(s, 3) for s in speed],
                "wall_s_mean": round(float(np.mean([r["wall_s"] for r in runs])), 1),
            }
        )
    ax.set_xlabel("trials")
    ax.set_ylabel("hypervolume (relative to the baseline)")
    ax.set_title("digits example on cpu-ort: mean over seeds (band: min to max)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "search_efficiency.png")
    plt.close(fig)
    summary = {"rows": rows, "runs": results, "recovery": recovery, "machine": fingerprint()}
    (out / "search_efficiency.json").write_text(json.dumps(summary, indent=1, default=float))
    cols = list(dict.fromkeys(k for r in rows for k in r))
    lines = [
        "# Search efficiency on the digits example (cpu-ort, 2 threads, batch 1)",
        "",
        "| " + " | ".join(cols) + " |",
        "|" + "---|" * len(cols),
    ]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in rows]
    default = by_name.get("default")
    random_runs = by_name.get("random")
    if default and random_runs:
        hv_default = float(np.mean([at(r["hypervolume"], budget) for r in default]))
        hv_random = float(np.mean([at(r["hypervolume"], 200) for r in random_runs]))
        verdict = "met" if hv_default >= hv_random else "not met"
        lines += [
            "",
            f"Target (default within {budget} trials reaches random search's hypervolume at "
            f"200): default {hv_default:.4f} vs random {hv_random:.4f}: {verdict}.",
        ]
    lines += equal_trials(results, workdir)
    cols = list(dict.fromkeys(k for r in recovery for k in r))
    lines += [
        "",
        "## Recovery on fixed candidates (accuracy on the full validation split)",
        "",
        "Every unit at the same level; BatchNorm statistics and bias correction use the "
        "calibration data, distillation its defaults (100 steps, lr 1e-4) on it.",
        "",
        "| " + " | ".join(cols) + " |",
        "|" + "---|" * len(cols),
    ]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in recovery]
    (out / "search_efficiency.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
