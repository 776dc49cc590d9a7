"""SmolLM2-135M on Austen: uniform compressions and the standard LLM recipes, in the same rounds.

`python benchmarks/llm.py` (after `make examples`; `pip install -e ".[bench]"` adds the
onnxruntime-genai build). Every model is a KV-cache graph measured on `cpu-ort-llm` (2 threads,
a 128-token prompt, 32 new tokens, greedy), all in the same interleaved rounds against the fp32
export (`tightfit.evaluators.measure_jointly`): prefill ms, decode ms per token and the whole
generation, as ratios to fp32 in the same rounds. Perplexity: the example's 16 windows of 256
tokens of *Persuasion*, scored by the same harness as a search (the graph itself, whole windows
as one prefill). Greedy continuations of fixed prompts are written for every model.

Models:
- `fp32`: the plain export, the reference every ratio is to;
- `fp32, tightfit's graph`: tightfit's baseline on `cpu-ort-llm`, exported with each layer's
  attention as ONNX Runtime's GroupQueryAttention, its RMS norms and rotary embeddings fused
  and its sibling projections packed (`kernels.fusion`), as every tightfit row below is;
- `recipe int8-dynamic`, `recipe int4`: the standard recipe of a generation profile
  (`tightfit.kernels.recipe`: dynamic int8 per channel; MatMulNBits 4-bit, blocks of 32,
  symmetric, on every MatMul);
- `onnxruntime-genai int4`: `python -m onnxruntime_genai.models.builder -p int4 -e cpu` (the
  deployment recipe for LLMs: GroupQueryAttention, rotary embedding and MatMulNBits fused by
  the builder), run by the same loop as the others (its head dimension made static, its
  attention mask fed); its own generator (`og.Generator`, which shares one cache buffer across
  steps) is timed against the fp32 export in rounds of its own;
- tightfit's kernels with one choice for every block (issue 27: "uniform baselines beside the
  front"), no recovery: `uniform int8` (8-bit weight-only MatMulNBits, the profile's int8),
  `uniform int4`, `uniform prune P + int8 / int4` (heads, in whole key/value groups, and MLP
  neurons pruned by P, the nearest ratio a unit offers at or below P), every MatMul including
  the tied head;
- `uniform int4, min-max grid`: every MatMul 4-bit on each block's own minimum and step
  (`quantization.int4_grid: minmax`, llama.cpp's Q4_1 grid, which SmolLM2's weights were
  de-quantized from), run as the symmetric kernel plus a block-sum product;
- `int4 MLP, int8 rest`, `int4 attention, int8 MLPs and head`, `int4, int8 head`, `int4 min-max
  grid, int8 head`: non-uniform plans picked by hand (not searched): 4-bit MLPs with 8-bit
  attention projections and head; the reverse; every projection 4-bit with the 8-bit head,
  on the symmetric grid and on the min-max grid (the GGUF's own grids: Q4_1 blocks for the
  projections, Q8_0 for the tied embedding).

Writes benchmarks/results/llm.{json,md} with the machine fingerprint.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._fingerprint import fingerprint, machine_line, write_result  # noqa: E402

PROMPTS = (
    "It is a truth universally acknowledged, that",
    "The weather was fine, and the whole party",
    "My dear Emma, said Mr. Knightley,",
)
CONTINUATION = 24


def genai_graph(checkpoint: Path, out: Path) -> Path | None:
    """onnxruntime-genai's int4 CPU build of ``checkpoint``, its cache inputs' head dimension
    made static (the builder leaves it symbolic); None where the package is missing."""
    import importlib.util

    import onnx

    if importlib.util.find_spec("onnxruntime_genai") is None:
        print(
            'onnxruntime-genai is not installed (pip install -e ".[bench]"): its build is left out'
        )
        return None
    if not (out / "model.onnx").exists():
        subprocess.run(
            [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(checkpoint),
             "-m", "HuggingFaceTB/SmolLM2-135M-Instruct", "-o", str(out), "-p", "int4",
             "-e", "cpu", "-c", str(out / "cache")],
            check=True, capture_output=True,
        )  # fmt: skip
    config = json.loads((out / "genai_config.json").read_text())["model"]["decoder"]
    model = onnx.load(str(out / "model.onnx"), load_external_data=False)
    for value in [*model.graph.input, *model.graph.output]:
        if value.name.startswith(("past_key_values.", "present.")):
            dims = value.type.tensor_type.shape.dim
            dims[3].Clear()
            dims[3].dim_value = config["head_size"]
    fixed = out / "model-static-head.onnx"  # beside model.onnx.data, which it references
    onnx.save(model, str(fixed))
    return fixed


def size_mb(path: Path) -> float:
    """The graph and the external weights file it references (onnxruntime-genai's
    ``model.onnx.data``), if any."""
    data = path.parent / "model.onnx.data"
    return (path.stat().st_size + (data.stat().st_size if data.exists() else 0)) / 1e6


def continuations(path: Path, profile: Any, feed: dict, tokenizer: Any) -> list[str]:
    """Each of :data:`PROMPTS` and its greedy continuation of :data:`CONTINUATION` tokens,
    generated by the runner that measures ``path``."""
    from tightfit.evaluators.runtimes import open_runner

    runner = open_runner(path, profile, feed)
    runner.steps = CONTINUATION - 1  # type: ignore[attr-defined]
    texts = []
    for prompt in PROMPTS:
        ids = np.array([tokenizer(prompt)["input_ids"]], dtype=np.int64)
        _, _, tokens = runner.generate(ids)  # type: ignore[attr-defined]
        texts.append(prompt + tokenizer.decode(tokens[0]))
    return texts


def og_rounds(folder: Path, baseline: Path, profile: Any, feed: dict, rounds: int) -> dict:
    """onnxruntime-genai's own generator against the fp32 export, alternating, one
    generation each per round: its decode ms per token and prefill, and the per-round ratio."""
    import onnxruntime_genai as og

    from tightfit.evaluators.runtimes import open_runner

    config_path = folder / "genai_config.json"
    config = json.loads(config_path.read_text())
    options = config["model"]["decoder"]["session_options"]
    options["intra_op_num_threads"] = profile.intra_op_threads
    options["inter_op_num_threads"] = profile.inter_op_threads
    config_path.write_text(json.dumps(config, indent=1))
    model = og.Model(str(folder))
    prompt = feed["input_ids"]
    new = profile.generation.new_tokens

    def generate() -> tuple[float, float]:
        params = og.GeneratorParams(model)
        params.set_search_options(do_sample=False, max_length=prompt.shape[1] + new)
        generator = og.Generator(model, params)
        t0 = time.perf_counter_ns()
        generator.append_tokens(prompt)
        t1 = time.perf_counter_ns()
        for _ in range(new - 1):
            generator.generate_next_token()
        t2 = time.perf_counter_ns()
        return (t1 - t0) / 1e6, (t2 - t1) / 1e6 / (new - 1)

    ours = open_runner(baseline, profile, feed)
    generate(), ours.run()  # warm both
    rows = []
    for _ in range(rounds):
        prefill, decode = generate()
        base_prefill, base_decode, _ = ours.generate()
        rows.append((prefill, decode, base_prefill, base_decode / (new - 1)))
    a = np.array(rows)
    return {
        "prefill_ms": float(np.median(a[:, 0])),
        "decode_ms_per_token": float(np.median(a[:, 1])),
        "fp32_decode_ms_per_token": float(np.median(a[:, 3])),
        "decode_ratio": float(np.median(a[:, 1] / a[:, 3])),
        "prefill_ratio": float(np.median(a[:, 0] / a[:, 2])),
        "rounds": rounds,
    }


def uniform(
    units: list, ratio: float, bits: int, mlp_bits: int, head_bits: int | None = None
) -> dict[str, Any]:
    """One choice for every unit: prune ratio ``ratio`` (the largest a unit offers at or below
    it), ``bits`` for every layer but the MLPs' (``mlp_bits``) and the head's (``head_bits``,
    default ``bits``)."""
    params: dict[str, Any] = {}
    for u in units:
        if u.knob == "prune_ratio" and ratio > 0:
            params[u.param_name] = max(c for c in u.choices if c <= ratio)
        elif u.knob == "bits":
            want = mlp_bits if ".mlp." in u.path else bits
            if head_bits is not None and u.path.endswith("lm_head"):
                want = head_bits
            if want not in u.choices:
                raise SystemExit(f"{u.path} offers {u.choices}, not {want} bits")
            params[u.param_name] = want
    return params


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--prunes", type=float, nargs="*", default=[0.25])
    parser.add_argument("--og-rounds", type=int, default=10)
    parser.add_argument(
        "--importance",
        choices=["magnitude", "activation"],
        help="how pruning ranks heads and neurons (default: the example's)",
    )
    parser.add_argument("--tag", default="", help="results as llm_<tag>.{json,md}")
    args = parser.parse_args()

    from transformers import AutoTokenizer

    from tightfit._ort import predict
    from tightfit.config import load_config
    from tightfit.evaluators import input_feed, measure_jointly
    from tightfit.examples.smollm2 import checkpoint_dir
    from tightfit.hardware_profiles import get_profile
    from tightfit.kernels import compress, discover_units
    from tightfit.kernels.recipe import build_recipe
    from tightfit.spaces import Candidate
    from tightfit.task import perplexity
    from tightfit.workspace import Setup, Workspace

    profile = get_profile("cpu-ort-llm")
    config = load_config(ROOT / "examples" / "smollm2.yaml")
    if args.importance:
        prune = config.space.prune.model_copy(update={"importance": args.importance})
        space = config.space.model_copy(update={"prune": prune})
        config = config.model_copy(update={"space": space})
    tokenizer = AutoTokenizer.from_pretrained(checkpoint_dir())
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        t0 = time.perf_counter()
        ws = Workspace(Setup.of(config, profile, tmp / "w"))
        setup_s = time.perf_counter() - t0
        plain = Path(ws.plain_onnx)  # the export as written; ws.baseline_onnx is fused, packed
        models: dict[str, Path] = {"fp32": plain, "fp32, tightfit's graph": ws.baseline_onnx}
        built: dict[str, dict[str, Any]] = {
            "fp32": {"build_s": 0.0},
            "fp32, tightfit's graph": {"build_s": 0.0, **ws.export_record},
        }
        for variant in ("int8-dynamic", "int4"):
            t0 = time.perf_counter()
            path, info = build_recipe(variant, plain, ws.ctx, tmp / variant)
            models[f"recipe {variant}"] = path
            built[f"recipe {variant}"] = {"build_s": time.perf_counter() - t0, **info}
        t0 = time.perf_counter()
        genai = genai_graph(checkpoint_dir(), tmp / "genai")
        if genai is not None:
            models["onnxruntime-genai int4"] = genai
            built["onnxruntime-genai int4"] = {"build_s": time.perf_counter() - t0}
        units = discover_units(ws.model, ws.ctx, config.space)
        # name: (prune ratio, bits, MLP bits, 4-bit grid, head bits)
        plans: dict[str, tuple[float, int, int, str, int | None]] = {
            "uniform int8": (0.0, 8, 8, "symmetric", None),
            "uniform int4": (0.0, 4, 4, "symmetric", None),
            "uniform int4, min-max grid": (0.0, 4, 4, "minmax", None),
        }
        for ratio in args.prunes:
            plans[f"uniform prune {ratio:g} + int8"] = (ratio, 8, 8, "symmetric", None)
            plans[f"uniform prune {ratio:g} + int4"] = (ratio, 4, 4, "symmetric", None)
        plans["int4 MLP, int8 rest (hand-picked)"] = (0.0, 8, 4, "symmetric", None)
        plans["int4, int8 head (hand-picked)"] = (0.0, 4, 4, "symmetric", 8)
        plans["int4 attention, int8 MLPs and head (hand-picked)"] = (0.0, 4, 8, "symmetric", 8)
        plans["int4 min-max grid, int8 head (hand-picked)"] = (0.0, 4, 4, "minmax", 8)
        for name, (ratio, bits, mlp_bits, grid, head_bits) in plans.items():
            params = uniform(units, ratio, bits, mlp_bits, head_bits)
            candidate = Candidate.from_params(ws.model_id, params)
            ctx = ws.ctx
            if grid != profile.quantization.int4_grid:
                settings = profile.quantization.model_copy(update={"int4_grid": grid})
                ctx = replace(
                    ctx, profile=ctx.profile.model_copy(update={"quantization": settings})
                )
            t0 = time.perf_counter()
            out = compress(ws.model, candidate, ctx, tmp / name.replace(" ", "_"))
            models[name] = out.onnx_path
            built[name] = {
                "build_s": time.perf_counter() - t0,
                "plan": candidate.summary(),
                "packed_matmuls": out.report.get("packed_matmuls", 0),
                "int4_grid": grid,
                **{k: v for k, v in out.report.get("quantize", {}).items() if "engaged" in k},
            }

        rows: dict[str, dict[str, Any]] = {}
        validation = ws.data.validation
        for name, path in models.items():
            t0 = time.perf_counter()
            logits = predict(path, validation, threads=profile.intra_op_threads)
            rows[name] = {
                **built[name],
                "perplexity": perplexity(logits, ws.data.targets),
                "perplexity_s": time.perf_counter() - t0,
                "size_mb": size_mb(path),
            }
            del logits
        shapes = {"input_ids": (profile.generation.prompt_tokens,)}
        feed = input_feed(shapes, {"input_ids": "int64"}, profile, seed=0)
        others = [n for n in models if n != "fp32"]
        t0 = time.perf_counter()
        results = measure_jointly([models[n] for n in others], plain, profile, feed)
        measure_s = time.perf_counter() - t0
        base = results[0].baseline_phases_ms
        rows["fp32"].update(phases_ms=base, ratio=1.0, ratio_ci=[1.0, 1.0])
        for name, result in zip(others, results, strict=True):
            rows[name].update(
                phases_ms=result.phases_ms,
                ratio=result.ratio,
                ratio_ci=list(result.ratio_ci),
                rounds=result.rounds,
                disturbed=result.disturbed,
            )
        for name, path in models.items():
            rows[name]["continuations"] = continuations(path, profile, feed, tokenizer)
        og = (
            og_rounds(genai.parent, plain, profile, feed, args.og_rounds)
            if genai is not None
            else None
        )
    result = {
        "fingerprint": fingerprint(),
        "profile": profile.model_dump(mode="json", include={"name", "generation"}),
        "setup_s": setup_s,
        "measure_s": measure_s,
        "rows": rows,
        "onnxruntime_genai_generator": og,
        "prune_importance": config.space.prune.importance,
    }
    write_result(f"llm_{args.tag}" if args.tag else "llm", result, write_markdown)


def write_markdown(result: dict, path: Path) -> None:
    fp, rows = result["fingerprint"], result["rows"]
    base = rows["fp32"]
    lines = [
        "# SmolLM2-135M on Austen: uniform compressions and the standard LLM recipes",
        "",
        f"`python benchmarks/llm.py`. Machine: {machine_line(fp)}. "
        f"Profile `cpu-ort-llm`: {result['profile']['generation']}. All models measured in the "
        f"same interleaved rounds against fp32 ({result['measure_s']:.0f} s). Perplexity: 16 "
        "windows of 256 tokens of *Persuasion* (held out), lower is better. Pruned rows: "
        f"{result.get('prune_importance', 'magnitude')} importance (the example's), no recovery.",
        "",
        "| model | perplexity | vs fp32 | decode ms/token | decode speedup [95% CI] | "
        "prefill ms | end to end ms | size MB |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in rows.items():
        ph = r["phases_ms"]
        ci = r["ratio_ci"]
        lines.append(
            f"| {name} | {r['perplexity']:.2f} | {r['perplexity'] / base['perplexity'] - 1:+.1%} "
            f"| {ph.get('decode_ms_per_token', float('nan')):.2f} | {1 / r['ratio']:.2f}x "
            f"[{1 / ci[1]:.2f}, {1 / ci[0]:.2f}] | {ph.get('prefill_ms', float('nan')):.0f} | "
            f"{ph.get('end_to_end_ms', float('nan')):.0f} | {r['size_mb']:.0f} |"
        )
    og = result["onnxruntime_genai_generator"]
    if og:
        lines += [
            "",
            f"onnxruntime-genai's own generator (`og.Generator`, shared cache buffer), "
            f"alternating with the fp32 export over {og['rounds']} rounds: decode "
            f"{og['decode_ms_per_token']:.2f} ms/token ({1 / og['decode_ratio']:.2f}x the fp32 "
            f"export's {og['fp32_decode_ms_per_token']:.2f}), prefill {og['prefill_ms']:.0f} ms.",
        ]
    lines += ["", "Greedy continuations (24 new tokens):", ""]
    for name, r in rows.items():
        lines.append(f"**{name}**")
        lines.append("")
        lines += [f"- {text!r}" for text in r["continuations"]]
        lines.append("")
    path.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
