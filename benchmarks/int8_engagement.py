"""Does int8 engage? `python benchmarks/int8_engagement.py`.

A ResNet-18 (torchvision's architecture, freshly initialised, 224x224, batch 1) on ``cpu-ort``,
measured in the same interleaved rounds against its plain fp32 export:

- **int8, exporter's graph**: what tightfit built before it inlined shared initializers, static
  Q/DQ per channel on every Conv and Gemm of the exporter's raw graph. Fresh BatchNorms fold into
  zero biases, which the exporter stores once and hands on through Identity nodes; the quantizer
  then cannot quantize those biases and leaves their Convs in float;
- **tightfit uniform int8**: the search space's uniform int8 candidate, built by the kernels a
  trial uses (shared initializers inlined at export), U8S8 (QUInt8 activations);
- **tightfit uniform int8, S8S8**: the same with QInt8 activations, the other variant that
  ``activation_type: auto`` measures (left out, with the reason, where its int8 does not
  engage on this machine's ONNX Runtime);
- **standard recipe**: what a user gets in a minute without tightfit, as every search builds it
  beside its front (``kernels.recipe``, ``int8-static``): ``quant_pre_process`` with its default
  graph optimization, then ``quantize_static`` (Q/DQ, the profile's types, per channel) on every
  operator it takes.

For each, the share of planned int8 layers that run as integer kernels in ONNX Runtime's
optimized graph (``int8_engaged``, ``kernels.quantization.engagement``) and the speedup over the
fp32 export. Latency needs no trained weights; calibration uses random images. Writes
benchmarks/results/int8_engagement.{json,md} with the machine fingerprint.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._fingerprint import fingerprint  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--profile", default="cpu-ort")
    parser.add_argument("--size", type=int, default=224, help="image side")
    args = parser.parse_args()

    import onnx
    import torch
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from tests.models import exporter_graph, resnet18
    from tightfit.config import SpaceSpec
    from tightfit.evaluators import input_feed, measure_jointly
    from tightfit.hardware_profiles import get_profile
    from tightfit.kernels import SurgeryContext, compress, discover_units, export_onnx
    from tightfit.kernels.quantization import _Reader, engagement
    from tightfit.kernels.recipe import build_recipe
    from tightfit.spaces import CompressionSpace

    logging.getLogger("onnxruntime.quantization").setLevel(logging.ERROR)
    logging.getLogger().setLevel(logging.ERROR)
    profile = get_profile(args.profile).with_int8_format("static")
    model = resnet18()
    tmp = Path(tempfile.mkdtemp(prefix="tightfit-int8-"))
    rng = np.random.default_rng(0)
    calibration = {"image": rng.standard_normal((16, 3, args.size, args.size)).astype(np.float32)}
    example = (torch.from_numpy(calibration["image"][:1]),)
    baseline = export_onnx(model, example, ["image"], tmp / "baseline.onnx")
    ctx = SurgeryContext(
        example_inputs=example,
        input_names=("image",),
        calibration=calibration,
        profile=profile,
        classifier="fc",
        baseline_onnx=baseline,
    )
    t0 = time.perf_counter()
    space = CompressionSpace(discover_units(model, ctx, SpaceSpec()), "bench", 0)
    uniform = space.uniform(bits=8)
    built = compress(model, uniform, ctx, tmp / "tightfit")
    build_s = time.perf_counter() - t0
    s8s8_ctx = replace(ctx, profile=profile.with_int8_format("static", "QInt8"))
    try:
        s8s8 = compress(model, uniform, s8s8_ctx, tmp / "tightfit-s8s8")
        s8s8_error = None
    except Exception as e:  # int8 that does not engage is refused (CandidateError)
        s8s8, s8s8_error = None, f"{type(e).__name__}: {str(e).splitlines()[0]}"

    # the exporter's raw graph, quantized as tightfit did before (shape inference only)
    raw = tmp / "raw.onnx"
    exporter_graph(model, example, raw)
    raw_nodes = {n.name for n in onnx.load(str(raw)).graph.node if n.op_type in ("Conv", "Gemm")}
    pre = tmp / "raw-pre.onnx"
    quant_pre_process(str(raw), str(pre), skip_optimization=True, skip_symbolic_shape=True)
    before = tmp / "raw-int8.onnx"
    quantize_static(
        str(pre),
        str(before),
        _Reader(calibration),
        quant_format=QuantFormat.QDQ,
        nodes_to_quantize=sorted(raw_nodes),
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )
    # the standard recipe, as every search builds it beside its front (kernels.recipe)
    recipe, _ = build_recipe("int8-static", baseline, ctx, tmp / "recipe")
    recipe_pre = tmp / "recipe" / "int8-static-pre.onnx"
    recipe_nodes = {
        n.name for n in onnx.load(str(recipe_pre)).graph.node if n.op_type in ("Conv", "Gemm")
    }
    engaged = {
        "int8, exporter's graph": engagement(raw, before, {8: raw_nodes}, ctx).report(),
        "tightfit uniform int8": built.report["quantize"],
        "standard recipe": engagement(recipe_pre, recipe, {8: recipe_nodes}, ctx).report(),
    }
    paths = {
        "int8, exporter's graph": before,
        "tightfit uniform int8": built.onnx_path,
        "standard recipe": recipe,
    }
    if s8s8 is not None:
        engaged["tightfit uniform int8, S8S8"] = s8s8.report["quantize"]
        paths["tightfit uniform int8, S8S8"] = s8s8.onnx_path
    feed = input_feed({"image": (3, args.size, args.size)}, {"image": "float32"}, profile, 0)
    t1 = time.perf_counter()
    results = measure_jointly(list(paths.values()), baseline, profile, feed, seed=0)
    measure_s = time.perf_counter() - t1

    rows = []
    for (name, path), r in zip(paths.items(), results, strict=True):
        rows.append(
            {
                "variant": name,
                "int8_engaged": engaged[name].get("int8_engaged"),
                "speedup": r.speedup,
                "ratio": r.ratio,
                "ratio_ci": list(r.ratio_ci),
                "median_ms": r.median_ms,
                "size_mb": path.stat().st_size / 1e6,
            }
        )
    result = {
        "profile": profile.name,
        "image_size": args.size,
        "baseline_median_ms": results[0].baseline_median_ms,
        "baseline_size_mb": baseline.stat().st_size / 1e6,
        "rounds": results[0].rounds,
        "build_s": round(build_s, 1),
        "measure_s": round(measure_s, 1),
        "rows": rows,
        "s8s8_error": s8s8_error,
        "machine": fingerprint(),
    }
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "int8_engagement.json").write_text(json.dumps(result, indent=1))
    (out / "int8_engagement.md").write_text(_markdown(result))
    print(_markdown(result))


def _markdown(r: dict) -> str:
    m = r["machine"]
    lines = [
        f"# int8 engagement: ResNet-18 at {r['image_size']}x{r['image_size']}, batch 1, {r['profile']}",
        "",
        f"Machine: {m['cpu']} ({m['cpu_count']} cores; {m['cpu_flags']}), "
        f"onnxruntime {m['onnxruntime']}, torch {m.get('torch', '?')}",
        "",
        f"fp32 export (the baseline): {r['baseline_median_ms']:.2f} ms, {r['baseline_size_mb']:.1f} MB. "
        f"All variants measured in the same {r['rounds']} interleaved rounds against it.",
        "",
        "| variant | int8_engaged | speedup over fp32 export | ratio [95% CI] | median ms | size MB |",
        "| --- | ---: | ---: | --- | ---: | ---: |",
    ]
    for row in r["rows"]:
        share = "n/a" if row["int8_engaged"] is None else f"{row['int8_engaged']:.2f}"
        lo, hi = row["ratio_ci"]
        lines.append(
            f"| {row['variant']} | {share} | {row['speedup']:.2f}x | {row['ratio']:.3f} "
            f"[{lo:.3f}, {hi:.3f}] | {row['median_ms']:.2f} | {row['size_mb']:.1f} |"
        )
    if r.get("s8s8_error"):
        lines += [
            "",
            f"tightfit uniform int8, S8S8: not built on this machine ({r['s8s8_error']}).",
        ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
