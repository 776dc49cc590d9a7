"""How well latency can be predicted, and measured, inside a search:
`python benchmarks/predictor_replay.py [--n-trials 80] [--workdir DIR]`.

Runs the digits example with pre-screening off and the per-layer table on (so every candidate
that survives staged evaluation is measured and carries both predictors' features), or reads a
finished search of that kind (``--workdir``). Then, over the measured candidates:

1. replays both predictors online, in the order the search measured (each predicts a candidate
   from the measurements before it): the graph-count fit (the default) and the layer table;
2. re-times every candidate's layers quietly, with nothing else running, and compares the rank
   of the search's own layer sums with the quiet ones;
3. measures every candidate twice more, quietly, one pass after the other: how well
   measurements rank each other bounds how well any predictor can rank them;
4. measures all of them twice more *jointly* (``evaluators.measure_jointly``: every round runs
   a block of each candidate and of the baseline, in random order), the passes alternating
   with those of 3 so that both protocols see the same stretch of the machine's time; and ranks
   the graph fit's online predictions against each protocol's mean of two passes.

Writes benchmarks/results/predictor_replay.{json,md} with the machine fingerprint.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._fingerprint import fingerprint  # noqa: E402


def _search(n_trials: int, tmp: Path) -> Path:
    from tightfit.config import load_config
    from tightfit.runs import run_search

    latency = {"cache_dir": str(tmp / "latency-cache"), "prescreen": False, "layer_table": True}
    workdir = tmp / "work"
    config = load_config(
        str(ROOT / "examples" / "digits.yaml"),
        {"n_trials": n_trials, "workdir": str(workdir), "latency": latency},
    )
    run_search(config)
    return workdir


def _spearman(a: list[float], b: list[float]) -> float:
    from tightfit.evaluators.predictor import spearman

    return round(spearman(a, b), 3)


def _median_abs_diff(a: list[float], b: list[float]) -> float:
    return round(float(np.median([abs(x / y - 1.0) for x, y in zip(a, b, strict=True)])), 4)


def replay(workdir: Path) -> dict:
    import optuna
    from optuna.trial import TrialState

    from tightfit.evaluators import input_feed
    from tightfit.evaluators.layer_table import LayerTable, layer_models
    from tightfit.evaluators.predictor import LatencyPredictor, LayerRatioPredictor
    from tightfit.hardware_profiles import get_profile
    from tightfit.spaces import Candidate
    from tightfit.studies import load_study
    from tightfit.workdir import load_workdir_config
    from tightfit.workspace import (
        MeasurementReference,
        Setup,
        measure,
        measure_many,
        measure_reference,
        workspace,
    )

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    config = load_workdir_config(workdir)
    hw = get_profile(config.profiles[0])
    study = load_study(config, hw.name, workdir)
    hw = hw.with_int8_format(study.user_attrs.get("int8_format", "static"))
    trials = sorted(
        (
            t
            for t in study.get_trials(states=(TrialState.COMPLETE,))
            if t.user_attrs.get("latency_cache") == "miss"
            and "layer_ms" in t.user_attrs["features"]
            and not t.user_attrs.get("is_baseline")  # compressed candidates only
        ),
        key=lambda t: t.datetime_complete,
    )
    if len(trials) < 8:
        raise SystemExit(f"{workdir}: {len(trials)} measured candidates with layer times; need 8")

    # 1. both predictors, online, in measurement order
    graph, layers = LatencyPredictor(), LayerRatioPredictor()
    online: list[tuple[float, float, float]] = []
    predicted: dict[int, float] = {}  # the graph fit's online prediction, by trial
    for t in trials:
        features, measured = t.user_attrs["features"], t.user_attrs["latency"]["latency_ms"]
        g, ly = graph.predict(features), layers.predict(features)
        if g is not None:
            predicted[t.number] = g
        if g is not None and ly is not None:
            online.append((g, ly, measured))
        graph.add(features, measured)
        layers.add(features, measured)

    # 2 and 3: rebuild each candidate, re-time its layers, re-measure it twice
    ws = workspace(Setup.of(config, hw, workdir))
    shapes, dtypes = ws.input_spec()
    feed = input_feed(shapes, dtypes, hw, seed=0)
    base = ws.baseline_onnx.read_bytes()
    table = LayerTable(hw, None)  # no cache: every shape timed now
    rows = []
    for t in trials:
        onnx_bytes, _ = ws.rebuild(Candidate.from_json(t.user_attrs["candidate"]))
        quiet_ms, _ = table.total_ms(
            layer_models(onnx_bytes, {k: v.shape for k, v in feed.items()})
        )
        rows.append(
            {
                "trial": t.number,
                "ratio_search": t.user_attrs["latency"]["ratio"],
                "layer_ms_search": t.user_attrs["features"]["layer_ms"],
                "layer_ms_quiet": quiet_ms,
                "onnx": onnx_bytes,
            }
        )
    against = MeasurementReference(
        baseline_onnx=base, input_shapes=shapes, input_dtypes=dtypes, seed=config.seed
    )
    ref_ms = measure_reference(hw, against).baseline_median_ms
    against = against.model_copy(update={"reference_ms": ref_ms})
    for n in (1, 2):
        for r in rows:
            r[f"ratio_quiet_{n}"] = measure(hw, r["onnx"], against).ratio
        joint = measure_many(hw, [r["onnx"] for r in rows], against.model_copy(update={"seed": n}))
        for r, lat in zip(rows, joint, strict=True):
            r[f"ratio_joint_{n}"] = lat.ratio
    for r in rows:
        del r["onnx"]
        r["predicted_ms"] = predicted.get(r["trial"])
        for kind in ("quiet", "joint"):
            r[f"ratio_{kind}_mean"] = (r[f"ratio_{kind}_1"] + r[f"ratio_{kind}_2"]) / 2

    col = {k: [r[k] for r in rows] for k in rows[0]}
    with_prediction = [r for r in rows if r["predicted_ms"] is not None]
    ratios = col["ratio_search"]
    return {
        "n_measured": len(rows),
        "ratio_range": [round(min(ratios), 3), round(max(ratios), 3)],
        "n_predicted_online": len(online),
        "online_spearman_graph": _spearman([o[0] for o in online], [o[2] for o in online]),
        "online_spearman_layers": _spearman([o[1] for o in online], [o[2] for o in online]),
        "layer_ms_search_vs_quiet": _spearman(col["layer_ms_search"], col["layer_ms_quiet"]),
        "layer_ms_quiet_vs_quiet_1": _spearman(col["layer_ms_quiet"], col["ratio_quiet_1"]),
        "quiet_1_vs_quiet_2": _spearman(col["ratio_quiet_1"], col["ratio_quiet_2"]),
        "quiet_1_vs_quiet_2_median_abs_diff": _median_abs_diff(
            col["ratio_quiet_1"], col["ratio_quiet_2"]
        ),
        "search_vs_quiet_1": _spearman(ratios, col["ratio_quiet_1"]),
        "search_vs_quiet_2": _spearman(ratios, col["ratio_quiet_2"]),
        "search_vs_quiet_1_median_abs_diff": _median_abs_diff(ratios, col["ratio_quiet_1"]),
        "joint_1_vs_joint_2": _spearman(col["ratio_joint_1"], col["ratio_joint_2"]),
        "joint_1_vs_joint_2_median_abs_diff": _median_abs_diff(
            col["ratio_joint_1"], col["ratio_joint_2"]
        ),
        "search_vs_joint_mean": _spearman(ratios, col["ratio_joint_mean"]),
        "quiet_mean_vs_joint_mean": _spearman(col["ratio_quiet_mean"], col["ratio_joint_mean"]),
        **{
            f"online_graph_vs_{kind}": _spearman(
                [r["predicted_ms"] for r in with_prediction],
                [r[column] for r in with_prediction],
            )
            for kind, column in (
                ("search", "ratio_search"),
                ("quiet_mean", "ratio_quiet_mean"),
                ("joint_mean", "ratio_joint_mean"),
            )
        },
        "n_predicted_graph": len(with_prediction),
        "rows": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n-trials", type=int, default=80)
    parser.add_argument("--workdir", default=None, help="a finished search to read instead")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="tightfit-replay-"))
    t0 = time.perf_counter()
    workdir = Path(args.workdir) if args.workdir else _search(args.n_trials, tmp)
    search_s = time.perf_counter() - t0
    wall = None if args.workdir else round(search_s, 1)
    result = {**replay(workdir), "search_wall_s": wall, "machine": fingerprint()}
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "predictor_replay.json").write_text(json.dumps(result, indent=2, default=float))
    m = result["machine"]
    lines = [
        "# Latency prediction and measurement inside the digits search (cpu-ort)",
        "",
        f"Machine: {m['cpu']} ({m['cpu_count']} cores; {m['cpu_flags']}), "
        f"onnxruntime {m['onnxruntime']}",
        "",
        f"{result['n_measured']} compressed candidates measured by the search (pre-screening "
        f"off), their latency {result['ratio_range'][0]}-{result['ratio_range'][1]} of the "
        "baseline's.",
        "",
        "| rank correlation (Spearman) | value |",
        "| --- | ---: |",
        f"| graph-count fit, online, vs measured ({result['n_predicted_online']} predictions) "
        f"| {result['online_spearman_graph']} |",
        f"| layer table ratio, online, vs measured | {result['online_spearman_layers']} |",
        f"| layer sums timed in the search vs re-timed quietly | "
        f"{result['layer_ms_search_vs_quiet']} |",
        f"| quiet layer sums vs quiet measurement 1 | {result['layer_ms_quiet_vs_quiet_1']} |",
        f"| quiet measurement 1 vs quiet measurement 2 (median difference "
        f"{result['quiet_1_vs_quiet_2_median_abs_diff']:.1%}) | {result['quiet_1_vs_quiet_2']} |",
        f"| search's measurement vs quiet 1 (median difference "
        f"{result['search_vs_quiet_1_median_abs_diff']:.1%}) | {result['search_vs_quiet_1']} |",
        f"| search's measurement vs quiet 2 | {result['search_vs_quiet_2']} |",
        f"| joint measurement 1 vs joint measurement 2 (median difference "
        f"{result['joint_1_vs_joint_2_median_abs_diff']:.1%}) | {result['joint_1_vs_joint_2']} |",
        f"| search's measurement vs joint mean | {result['search_vs_joint_mean']} |",
        f"| quiet mean vs joint mean | {result['quiet_mean_vs_joint_mean']} |",
        "",
        f"The graph-count fit's online predictions ({result['n_predicted_graph']} candidates: "
        "each predicted from the measurements before it, as in the search), ranked against:",
        "",
        "| measurement | Spearman |",
        "| --- | ---: |",
        f"| the search's own | {result['online_graph_vs_search']} |",
        f"| mean of the two quiet passes (one at a time) | {result['online_graph_vs_quiet_mean']} |",
        f"| mean of the two joint passes | {result['online_graph_vs_joint_mean']} |",
        "",
        "| trial | ratio (search) | quiet 1 | quiet 2 | joint 1 | joint 2 | predicted ms "
        "| layer ms (search) | layer ms (quiet) |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in result["rows"]:
        pred = "" if r["predicted_ms"] is None else f"{r['predicted_ms']:.3f}"
        lines.append(
            f"| {r['trial']} | {r['ratio_search']:.3f} | {r['ratio_quiet_1']:.3f} | "
            f"{r['ratio_quiet_2']:.3f} | {r['ratio_joint_1']:.3f} | {r['ratio_joint_2']:.3f} | "
            f"{pred} | {r['layer_ms_search']:.3f} | {r['layer_ms_quiet']:.3f} |"
        )
    (out / "predictor_replay.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
