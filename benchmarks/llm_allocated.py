"""SmolLM2-135M: 4 bits where the sensitivity scan says they cost least, 8 bits elsewhere.

`python benchmarks/llm_allocated.py` (after `python benchmarks/llm_sensitivity.py`, whose
`llm_sensitivity.json` it reads). For a perplexity budget ``b``, the blocks are taken from the
least sensitive up while the sum of their one-at-a-time increases stays within ``b``; their
seven projections go 4-bit, every other projection and the tied head 8-bit (weight-only
MatMulNBits, the profile's int8). Each plan is compressed by tightfit's kernels on
`cpu-ort-llm` (its decoder graph: GroupQueryAttention, fused, packed, its cache one shared
buffer), scored by the graph on the 16 held-out windows and measured in the same interleaved
rounds as the fp32 export, the standard LLM recipe (onnxruntime-genai's int4 build, where
`pip install -e ".[bench]"` installed it), uniform int8 and every projection 4-bit with the
8-bit head. No search: the allocation is the scan's greedy one, the plan issue 27 asks a
search to start from.

Writes benchmarks/results/llm_allocated.{json,md} with the machine fingerprint.
"""

from __future__ import annotations

import json
import re
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._fingerprint import fingerprint, machine_line, write_result  # noqa: E402

BUDGETS = (0.02, 0.04, 0.05, 0.06, 0.08)


def allocate(scan: dict[str, float], baseline: float, budget: float) -> list[int]:
    """The blocks that go 4-bit: least sensitive first, while the sum of their increases
    (a decrease counts as none) stays within ``budget``."""
    blocks = sorted(
        ((v / baseline - 1, int(k.split()[1])) for k, v in scan.items() if k.startswith("block ")),
    )
    chosen, spent = [], 0.0
    for increase, block in blocks:
        if spent + max(increase, 0.0) > budget:
            break
        chosen.append(block)
        spent += max(increase, 0.0)
    return sorted(chosen)


def plan(units: list, four_bit_blocks: set[int] | None) -> dict[str, Any]:
    """8 bits everywhere, 4 bits for the projections of ``four_bit_blocks`` (None: every
    block)."""
    params: dict[str, Any] = {}
    for u in units:
        if u.knob != "bits":
            continue
        match = re.search(r"layers\.(\d+)\.", u.path)
        four = match is not None and (four_bit_blocks is None or int(match[1]) in four_bit_blocks)
        params[u.param_name] = 4 if four else 8
    return params


def main() -> None:
    import onnx
    from transformers import AutoTokenizer

    from benchmarks.llm import continuations, genai_graph, size_mb
    from tightfit._ort import predict
    from tightfit.config import load_config
    from tightfit.evaluators import input_feed, measure_jointly
    from tightfit.evaluators.runtimes import open_runner
    from tightfit.examples.smollm2 import checkpoint_dir
    from tightfit.hardware_profiles import get_profile
    from tightfit.kernels import compress, discover_units
    from tightfit.spaces import Candidate
    from tightfit.task import perplexity
    from tightfit.workspace import Setup, Workspace

    scan = json.loads((ROOT / "benchmarks" / "results" / "llm_sensitivity.json").read_text())
    profile = get_profile("cpu-ort-llm")
    config = load_config(ROOT / "examples" / "smollm2.yaml")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        ws = Workspace(Setup.of(config, profile, tmp / "w"))
        plain = Path(ws.plain_onnx)
        units = discover_units(ws.model, ws.ctx, config.space)
        plans: dict[str, set[int] | None] = {"uniform int8": set(), "int4, int8 head": None}
        chosen: dict[str, list[int]] = {}
        for budget in BUDGETS:
            blocks = allocate(scan["perplexity"], scan["baseline"], budget)
            name = f"int4 in {len(blocks)} blocks (scan budget {budget:+.1%}), int8 rest"
            plans[name] = set(blocks)
            chosen[name] = blocks
        models: dict[str, Path] = {"fp32": plain}
        rows: dict[str, dict[str, Any]] = {"fp32": {}}
        genai = genai_graph(checkpoint_dir(), tmp / "genai")
        if genai is not None:
            models["onnxruntime-genai int4 (the recipe)"] = genai
            rows["onnxruntime-genai int4 (the recipe)"] = {}
        for name, blocks in plans.items():
            candidate = Candidate.from_params(ws.model_id, plan(units, blocks))
            t0 = time.perf_counter()
            out = compress(ws.model, candidate, ws.ctx, tmp / f"m{len(models)}")
            models[name] = out.onnx_path
            graph = onnx.load(str(out.onnx_path), load_external_data=False).graph
            rows[name] = {
                "build_s": time.perf_counter() - t0,
                "four_bit_blocks": chosen.get(name),
                "nodes": len(graph.node),
                "ops": dict(Counter(n.op_type for n in graph.node)),
            }
        for name, path in models.items():
            logits = predict(path, ws.data.validation, threads=profile.intra_op_threads)
            rows[name]["perplexity"] = perplexity(logits, ws.data.targets)
            rows[name]["size_mb"] = size_mb(path)
            del logits
        shapes = {"input_ids": (profile.generation.prompt_tokens,)}
        feed = input_feed(shapes, {"input_ids": "int64"}, profile, seed=0)
        tokenizer = AutoTokenizer.from_pretrained(checkpoint_dir())
        for name, path in models.items():  # how the measurement keeps each graph's cache
            rows[name]["cache_buffer"] = open_runner(path, profile, feed).cache_buffer  # type: ignore[attr-defined]
            rows[name]["continuations"] = continuations(path, profile, feed, tokenizer)
        others = [n for n in models if n != "fp32"]
        results = measure_jointly([models[n] for n in others], plain, profile, feed)
        rows["fp32"].update(phases_ms=results[0].baseline_phases_ms, ratio=1.0, ratio_ci=[1, 1])
        for name, result in zip(others, results, strict=True):
            rows[name].update(
                phases_ms=result.phases_ms, ratio=result.ratio, ratio_ci=list(result.ratio_ci)
            )
    result = {
        "fingerprint": fingerprint(),
        "profile": {"thread_spinning": profile.thread_spinning, **profile.generation.model_dump()},
        "rows": rows,
    }
    write_result("llm_allocated", result, write_markdown)


def write_markdown(result: dict, path: Path) -> None:
    rows = result["rows"]
    base = rows["fp32"]["perplexity"]
    lines = [
        "# SmolLM2-135M: 4 bits where the sensitivity scan allows, 8 bits elsewhere",
        "",
        f"`python benchmarks/llm_allocated.py`. Machine: {machine_line(result['fingerprint'])}."
        f" `cpu-ort-llm` ({result.get('profile', {})}), all rows in the same interleaved rounds "
        "against the fp32 export; perplexity on the 16 held-out windows (lower is better); "
        "blocks chosen from `llm_sensitivity.json`. Cache: `shared`, one buffer bound as past "
        "and present; `copied`, each step's present fed back.",
        "",
        "| plan | 4-bit blocks | perplexity | vs fp32 | decode ms/token | decode speedup "
        "[95% CI] | size MB | nodes | cache |",
        "| --- | --- | ---: | ---: | ---: | --- | ---: | ---: | --- |",
    ]
    for name, r in rows.items():
        ci = r["ratio_ci"]
        blocks = r.get("four_bit_blocks")
        lines.append(
            f"| {name} | {', '.join(map(str, blocks)) if blocks else ''} "
            f"| {r['perplexity']:.2f} | {r['perplexity'] / base - 1:+.1%} "
            f"| {r['phases_ms']['decode_ms_per_token']:.2f} | {1 / r['ratio']:.2f}x "
            f"[{1 / ci[1]:.2f}, {1 / ci[0]:.2f}] | {r['size_mb']:.0f} | {r.get('nodes', '')} "
            f"| {r.get('cache_buffer', '')} |"
        )
    lines += ["", "Greedy continuations (24 new tokens):", ""]
    for name, r in rows.items():
        lines += [f"**{name}**", "", *(f"- {text!r}" for text in r.get("continuations", [])), ""]
    path.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
