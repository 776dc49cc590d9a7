"""TorchScript or dynamo? `python benchmarks/exporters.py`.

For each model, both of torch.onnx's exporters as a profile's ``exporter`` drives them
(``tightfit.kernels.export.export_onnx``): the time one export takes (median of ``--repeats``;
every candidate of a search is exported once), whether the nodes map to the same modules (the
handle every per-layer plan uses), and what ONNX Runtime's transformer optimizer fuses in each
graph (``kernels.recipe.fused_graph``: ONNX Runtime's transformer optimizer for TorchScript
graphs, onnxscript's ``optimize_for_ort`` for dynamo ones), and the fused graphs' latency in the
same interleaved rounds, as ratios to the plain TorchScript export.

Models: the digits example's CNN (Conv + BatchNorm, folded by both exporters) and, where its
package is installed (``make examples``), all-MiniLM-L6-v2 at the example's calibration length.
Writes benchmarks/results/exporters.{json,md} with the machine fingerprint.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._fingerprint import fingerprint  # noqa: E402

EXPORTERS = {"torchscript": 17, "dynamo": 18}  # each at its default opset


def models(tmp: Path) -> list[tuple[str, Any, tuple, list[str], tuple[int, int] | None]]:
    import torch

    from tightfit.examples.digits import DigitsResNet
    from tightfit.examples.digits import load_data as digits

    data = digits()["calibration"]
    found = [
        (
            "digits CNN (width 48)",
            DigitsResNet(48).eval(),
            tuple(torch.from_numpy(v[:2]) for v in data.values()),
            list(data),
            None,
        )
    ]
    try:
        from tightfit.examples.minilm import load_data, pretrained_minilm
        from tightfit.kernels.recipe import attention_shape

        model = pretrained_minilm()
        text = load_data(cache_dir=tmp / "cache")["calibration"]
        example = tuple(torch.from_numpy(v[:2]) for v in text.values())
        found.append(("all-MiniLM-L6-v2", model, example, list(text), attention_shape(model)))
    except Exception as e:  # noqa: BLE001 - the example's package is optional
        print(f"all-MiniLM-L6-v2 skipped: {type(e).__name__}: {e}")
    return found


def shapes(example: tuple, names: list[str]) -> dict[str, tuple[int, ...]]:
    return {n: tuple(t.shape[1:]) for n, t in zip(names, example, strict=True)}


def dtypes(example: tuple, names: list[str]) -> dict[str, str]:
    return {n: str(t.numpy().dtype) for n, t in zip(names, example, strict=True)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--profile", default="cpu-ort", help="where latency is measured")
    args = parser.parse_args()

    import onnx

    from tightfit.evaluators import input_feed, measure_jointly
    from tightfit.hardware_profiles import get_profile
    from tightfit.kernels.export import export_onnx, nodes_by_module
    from tightfit.kernels.recipe import fused_graph

    profile = get_profile(args.profile)

    rows = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for name, model, example, names, attention in models(tmp):
            mapping: dict[str, dict[str, int]] = {}
            fused: dict[str, Path] = {}
            for exporter, opset in EXPORTERS.items():
                path = tmp / f"{exporter}.onnx"
                times = []
                for _ in range(args.repeats):
                    t0 = time.perf_counter()
                    export_onnx(model, example, names, path, opset=opset, exporter=exporter)
                    times.append(time.perf_counter() - t0)
                graph = onnx.load(path)
                mapping[exporter] = {m: len(n) for m, n in nodes_by_module(graph).items()}
                kept = tmp / f"{exporter}-kept.onnx"  # the next model's export overwrites path
                kept.write_bytes(path.read_bytes())
                graph_path, fusions = fused_graph(kept, tmp / f"fused-{exporter}", attention)
                fused[exporter] = graph_path
                rows.append(
                    {
                        "model": name,
                        "exporter": exporter,
                        "opset": opset,
                        "export_s": statistics.median(times),
                        "nodes": len(graph.graph.node),
                        "modules_mapped": len(mapping[exporter]),
                        "fused": fusions,
                    }
                )
            same = mapping["torchscript"] == mapping["dynamo"]
            for row in rows[-2:]:
                row["same_mapping"] = same
            # the graphs a deployment runs (fused where anything fused), in the same rounds,
            # each as a ratio to the TorchScript export
            graphs = [fused.get(e, tmp / f"{e}.onnx") for e in EXPORTERS]
            feed = input_feed(shapes(example, names), dtypes(example, names), profile, seed=0)
            results = measure_jointly(graphs, tmp / "torchscript.onnx", profile, feed, seed=0)
            for row, result in zip(rows[-2:], results, strict=True):
                row["latency_ratio_to_torchscript_export"] = result.ratio
                row["latency_ratio_ci"] = list(result.ratio_ci)
    result = {"fingerprint": fingerprint(), "repeats": args.repeats, "rows": rows}
    out = ROOT / "benchmarks" / "results"
    (out / "exporters.json").write_text(json.dumps(result, indent=1))
    lines = [
        "# TorchScript or dynamo exporter",
        "",
        f"`python benchmarks/exporters.py` (median of {args.repeats} exports). Machine: "
        f"{result['fingerprint'].get('cpu', '?')}, torch {result['fingerprint'].get('torch', '?')}, "
        f"onnxruntime {result['fingerprint'].get('onnxruntime', '?')}.",
        "",
        "Latency: the graph a deployment runs (the fused one where anything fused: ONNX "
        "Runtime's transformer optimizer on TorchScript graphs, onnxscript's optimize_for_ort "
        f"on dynamo ones), fp32, on `{args.profile}`, both measured in the same interleaved "
        "rounds as a ratio to the plain TorchScript export (lower is faster).",
        "",
        "| model | exporter | opset | export (s) | nodes | modules mapped | same mapping | "
        "fused operators | latency ratio [95% CI] |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        fused = ", ".join(f"{k} {v}" for k, v in sorted(r["fused"].items())) or "nothing"
        lines.append(
            f"| {r['model']} | {r['exporter']} | {r['opset']} | {r['export_s']:.2f} | "
            f"{r['nodes']} | {r['modules_mapped']} | {r['same_mapping']} | {fused} | "
            f"{r['latency_ratio_to_torchscript_export']:.3f} [{r['latency_ratio_ci'][0]:.3f}, "
            f"{r['latency_ratio_ci'][1]:.3f}] |"
        )
    (out / "exporters.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
