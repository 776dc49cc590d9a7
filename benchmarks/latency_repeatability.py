"""Are latency measurements repeatable? `python benchmarks/latency_repeatability.py`.

A front of candidates of the digits example network (pruned, factorized, int8 and mixes: a
spread of speedups, some close together) is measured twice, independently, on ``cpu-ort``:

- **tightfit's protocol**: a fresh reference latency of the baseline, then each candidate
  interleaved with the baseline over rounds, median ratio, more rounds to a target CI;
- **the naive protocol**: the baseline timed once, then each candidate back to back (mean of
  ``NAIVE_RUNS`` runs after one warm-up run), speedup = baseline mean / candidate mean.

Both protocols run in two scenarios: **quiet** (nothing else on the machine) and **shared** (a
process beside the measurement busy-loops on one core in random bursts, as a neighbour on a shared
machine does). The two passes of each protocol are compared: Spearman rank correlation of the
latencies and the median absolute difference of the speedups (relative). Latency needs no
trained weights: the network is randomly initialised (int8 calibration still uses the real
digits images). Writes benchmarks/results/latency_repeatability.{json,md} with the machine
fingerprint.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._fingerprint import fingerprint  # noqa: E402

NAIVE_RUNS = 100
SCENARIOS = ("quiet", "shared")
BURST_S = (0.2, 2.0)  # busy, then idle, for a random time in this range, in the shared scenario


def candidates(space):  # a spread of speedups, several of them close together
    return {
        "baseline": space.baseline(),
        "prune-0.25": space.uniform(prune_ratio=0.25),
        "prune-0.5": space.uniform(prune_ratio=0.5),
        "lowrank-0.5": space.uniform(rank_fraction=0.5),
        "int8": space.uniform(bits=8),
        "prune-0.25+int8": space.uniform(prune_ratio=0.25, bits=8),
        "prune-0.5+int8": space.uniform(prune_ratio=0.5, bits=8),
        "lowrank-0.5+int8": space.uniform(rank_fraction=0.5, bits=8),
        "prune-0.375+lowrank-0.75+int8": space.uniform(
            prune_ratio=0.375, rank_fraction=0.75, bits=8
        ),
        "prune-0.125": space.uniform(prune_ratio=0.125),
    }


def naive_pass(paths: dict[str, Path], baseline: Path, profile, feed) -> dict[str, float]:
    from tightfit.evaluators.runtimes import open_runner

    def mean_ms(path: Path) -> float:  # the same runtime and timer, none of the protocol
        runner = open_runner(path, profile, feed)
        runner.run()
        return float(runner.block(NAIVE_RUNS).mean())

    base = mean_ms(baseline)
    return {name: mean_ms(p) / base for name, p in paths.items()}  # latency ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--profile", default="cpu-ort")
    parser.add_argument("--tag", default="", help="suffix of the result files")
    parser.add_argument(
        "--scenarios", default=",".join(SCENARIOS), help=f"comma-separated, of {SCENARIOS}"
    )
    args = parser.parse_args()
    scenarios = args.scenarios.split(",")
    unknown = [s for s in scenarios if s not in SCENARIOS]
    if unknown:  # before the minutes of set-up
        parser.error(f"--scenarios: unknown {unknown}; choose from {', '.join(SCENARIOS)}")

    import torch

    from tightfit.config import CallableSpec, SpaceSpec
    from tightfit.evaluators import input_feed
    from tightfit.examples.digits import DigitsResNet
    from tightfit.hardware_profiles import get_profile
    from tightfit.kernels import SurgeryContext, compress, discover_units, export_onnx
    from tightfit.spaces import CompressionSpace
    from tightfit.task import load_data
    from tightfit.workspace import find_output_layer

    profile = get_profile(args.profile)
    if profile.float_precision == "fp16":
        from tightfit.kernels.precision import to_float16
    data = load_data(CallableSpec(callable="digits"))
    torch.manual_seed(0)
    model = DigitsResNet(48).eval()
    tmp = Path(tempfile.mkdtemp(prefix="tightfit-repeat-"))
    example = data.example_inputs()
    baseline = export_onnx(model, example, data.input_names, tmp / "baseline.onnx")
    float_baseline = baseline
    if profile.float_precision == "fp16":
        baseline = to_float16(float_baseline, tmp / "baseline-fp16.onnx")
    ctx = SurgeryContext(
        example_inputs=example,
        input_names=data.input_names,
        calibration=data.calibration,
        profile=profile,
        classifier=find_output_layer(model, example),
        baseline_onnx=float_baseline,
    )
    space = CompressionSpace(discover_units(model, ctx, SpaceSpec()), "bench", 0)
    paths = {
        name: compress(model, c, ctx, tmp / name).onnx_path for name, c in candidates(space).items()
    }
    shapes = {k: tuple(v.shape[1:]) for k, v in data.validation.items()}
    dtypes = {k: str(v.dtype) for k, v in data.validation.items()}
    feed = input_feed(shapes, dtypes, profile, seed=0)
    names = list(paths)
    result: dict = {"profile": profile.name, "n_candidates": len(names), "scenarios": {}}
    for scenario in scenarios:
        with background_load(scenario):
            ours, naive, seconds = two_passes(paths, baseline, profile, shapes, dtypes, feed)
        result["scenarios"][scenario] = {
            "tightfit": {
                **compare(ours, names),
                "seconds": round(seconds["ours"], 1),
                "rounds": seconds["rounds"],
                "rounds_contended_share": seconds["contended"] / max(seconds["rounds"], 1),
                "rounds_dropped_share": seconds["dropped"] / max(seconds["rounds"], 1),
                "measured_under_load": seconds["under_load"],
            },
            "naive": {**compare(naive, names), "seconds": round(seconds["naive"], 1)},
            "speedups": {
                n: {
                    "tightfit": [1 / ours[0][n], 1 / ours[1][n]],
                    "naive": [1 / naive[0][n], 1 / naive[1][n]],
                }
                for n in names
            },
        }
    result["naive_runs"] = NAIVE_RUNS
    result["machine"] = fingerprint()
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"latency_repeatability{args.tag}.json").write_text(json.dumps(result, indent=2))
    lines = report(result, profile.name, len(names))
    (out / f"latency_repeatability{args.tag}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def two_passes(paths, baseline, profile, shapes, dtypes, feed):
    """Each protocol measures every candidate twice, in a fresh random order per pass."""
    from tightfit.workspace import MeasurementReference, measure, measure_reference

    base_bytes = baseline.read_bytes()
    ours, naive, seconds = [], [], {"ours": 0.0, "naive": 0.0}
    seconds.update(rounds=0, contended=0, dropped=0, under_load=0)
    rng = np.random.default_rng(0)
    for p in range(2):
        t0 = time.perf_counter()
        against = MeasurementReference(
            baseline_onnx=base_bytes, input_shapes=shapes, input_dtypes=dtypes, seed=100 * p
        )
        ref = measure_reference(profile, against)
        against = against.model_copy(update={"reference_ms": ref.baseline_median_ms})
        order = list(paths)
        rng.shuffle(order)
        results = {
            name: measure(
                profile,
                paths[name].read_bytes(),
                against.model_copy(update={"seed": 100 * p + i}),
            )
            for i, name in enumerate(order)
        }
        ours.append({n: r.ratio for n, r in results.items()})
        for r in results.values():  # how much of the protocol's measuring others disturbed
            seconds["rounds"] += r.rounds + r.rounds_dropped
            seconds["contended"] += r.rounds_contended
            seconds["dropped"] += r.rounds_dropped
            seconds["under_load"] += int(r.disturbed)
        seconds["ours"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        naive.append(naive_pass({n: paths[n] for n in order}, baseline, profile, feed))
        seconds["naive"] += time.perf_counter() - t0
        print(f"pass {p + 1}: ours {seconds['ours']:.0f} s, naive {seconds['naive']:.0f} s so far")
    return ours, naive, seconds


def compare(passes: list[dict[str, float]], names: list[str]) -> dict[str, float]:
    from tightfit.evaluators.predictor import spearman

    a = [passes[0][n] for n in names]
    b = [passes[1][n] for n in names]
    speed_a, speed_b = 1 / np.array(a), 1 / np.array(b)
    diffs = np.abs(speed_a - speed_b) / speed_a
    return {
        "spearman": spearman(a, b),
        "median_abs_speedup_diff": float(np.median(diffs)),
        "max_abs_speedup_diff": float(np.max(diffs)),
    }


def report(result: dict, profile: str, n: int) -> list[str]:
    m = result["machine"]
    lines = [
        f"# Latency repeatability on {profile}: two independent passes over {n} candidates",
        "",
        f"Machine: {m['cpu']} ({m['cpu_count']} cores; {m['cpu_flags']}), onnxruntime {m['onnxruntime']}",
        "",
        "Scenarios: **quiet** (nothing else runs) and **shared** (a process beside the measurement"
        f" takes a core in bursts: busy and idle for {BURST_S[0]}-{BURST_S[1]} s each, at random,"
        " as a neighbour on a shared machine does).",
        "",
        "| scenario | protocol | Spearman (pass 1 vs 2) | median abs speedup diff | max abs speedup diff | seconds (2 passes) |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for scenario, r in result["scenarios"].items():
        t, nv = r["tightfit"], r["naive"]
        lines += [
            f"| {scenario} | tightfit (interleaved, median ratio, adaptive rounds) | {t['spearman']:.3f} | {t['median_abs_speedup_diff']:.2%} | {t['max_abs_speedup_diff']:.2%} | {t['seconds']:.0f} |",
            f"| {scenario} | naive (back to back, mean of {NAIVE_RUNS}) | {nv['spearman']:.3f} | {nv['median_abs_speedup_diff']:.2%} | {nv['max_abs_speedup_diff']:.2%} | {nv['seconds']:.0f} |",
        ]
    lines += [
        "",
        "Rounds of tightfit's protocol that other processes disturbed (seen in /proc/stat: the"
        " pinned CPUs' busy time minus the measuring process's own CPU time, plus steal), dropped"
        " and measured again:",
        "",
        "| scenario | rounds run | dropped for contention | dropped in all | measurements under load |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for scenario, r in result["scenarios"].items():
        t = r["tightfit"]
        lines.append(
            f"| {scenario} | {t.get('rounds', 0)} | {t.get('rounds_contended_share', 0):.1%} | "
            f"{t.get('rounds_dropped_share', 0):.1%} | {t.get('measured_under_load', 0)} |"
        )
    for scenario, r in result["scenarios"].items():
        lines += [
            "",
            f"Speedups, {scenario}:",
            "",
            "| candidate | tightfit pass 1 | pass 2 | naive pass 1 | pass 2 |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
        for name, s in r["speedups"].items():
            lines.append(
                f"| {name} | {s['tightfit'][0]:.3f}x | {s['tightfit'][1]:.3f}x | {s['naive'][0]:.3f}x | {s['naive'][1]:.3f}x |"
            )
    return lines


BURNER = """
import random, sys, time
rng = random.Random(int(sys.argv[1]))
lo, hi = float(sys.argv[2]), float(sys.argv[3])
while True:
    end = time.perf_counter() + rng.uniform(lo, hi)
    while time.perf_counter() < end:
        pass
    time.sleep(rng.uniform(lo, hi))
"""


@contextmanager
def background_load(scenario: str) -> Iterator[None]:
    """Nothing for "quiet"; for "shared", one process that busy-loops on a core in bursts."""
    if scenario == "quiet":
        yield
        return
    args = [sys.executable, "-c", BURNER, "0", *map(str, BURST_S)]
    burner = subprocess.Popen(args)
    try:
        yield
    finally:
        burner.terminate()
        burner.wait()


if __name__ == "__main__":
    main()
