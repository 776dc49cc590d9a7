"""SmolLM2-135M: MatMulNBits' block size and symmetry, measured (issue 27's "int4: block size,
symmetric or not").

`python benchmarks/llm_int4_formats.py` (after `make examples`). Every MatMul of the fp32
KV-cache export, the tied head included (``fold_weight_transposes``), is made 4-bit with one
format per row; 8-bit weight-only (blocks of 32) is the reference row. Perplexity: the
example's 16 windows of 256 tokens of *Persuasion*; decode ms per token on `cpu-ort-llm`, all
rows in the same interleaved rounds against the fp32 export (`measure_jointly`).

Writes benchmarks/results/llm_int4_formats.{json,md} with the machine fingerprint.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._fingerprint import fingerprint, machine_line, write_result  # noqa: E402

#: (bits, block size, symmetric)
FORMATS = {
    "int4 b32 symmetric (the default)": (4, 32, True),
    "int4 b32 asymmetric": (4, 32, False),
    "int4 b16 symmetric": (4, 16, True),
    "int4 b64 symmetric": (4, 64, True),
    "int4 b128 symmetric": (4, 128, True),
    "int8 weight-only b32": (8, 32, True),
}


def main() -> None:
    import logging

    from tightfit._ort import predict
    from tightfit.config import load_config
    from tightfit.evaluators import input_feed, measure_jointly
    from tightfit.hardware_profiles import get_profile
    from tightfit.kernels.export import fold_weight_transposes
    from tightfit.kernels.quantization import _quantize_nbits
    from tightfit.task import perplexity
    from tightfit.workspace import Setup, Workspace

    logging.getLogger("onnxruntime.quantization").setLevel(logging.ERROR)
    profile = get_profile("cpu-ort-llm")
    config = load_config(ROOT / "examples" / "smollm2.yaml")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        ws = Workspace(Setup.of(config, profile, tmp / "w"))
        folded = fold_weight_transposes(ws.baseline_onnx, tmp / "folded.onnx")
        models: dict[str, Path] = {}
        rows: dict[str, dict[str, Any]] = {}
        for name, (bits, block, symmetric) in FORMATS.items():
            path = tmp / f"{len(models)}.onnx"
            t0 = time.perf_counter()
            _quantize_nbits(folded, path, None, bits, block, symmetric)
            models[name] = path
            rows[name] = {"bits": bits, "block_size": block, "symmetric": symmetric,
                          "build_s": time.perf_counter() - t0}  # fmt: skip
        for name, path in {"fp32": ws.baseline_onnx, **models}.items():
            logits = predict(path, ws.data.validation, threads=profile.intra_op_threads)
            rows.setdefault(name, {}).update(
                perplexity=perplexity(logits, ws.data.targets), size_mb=path.stat().st_size / 1e6
            )
            del logits
        shapes = {"input_ids": (profile.generation.prompt_tokens,)}  # type: ignore[union-attr]
        feed = input_feed(shapes, {"input_ids": "int64"}, profile, seed=0)
        results = measure_jointly(list(models.values()), ws.baseline_onnx, profile, feed)
        rows["fp32"].update(phases_ms=results[0].baseline_phases_ms, ratio=1.0)
        for name, result in zip(models, results, strict=True):
            rows[name].update(
                phases_ms=result.phases_ms, ratio=result.ratio, ratio_ci=list(result.ratio_ci)
            )
    result = {"fingerprint": fingerprint(), "rows": rows}
    write_result("llm_int4_formats", result, write_markdown)


def write_markdown(result: dict, path: Path) -> None:
    fp, rows = result["fingerprint"], result["rows"]
    base = rows["fp32"]
    lines = [
        "# SmolLM2-135M: MatMulNBits block size and symmetry",
        "",
        f"`python benchmarks/llm_int4_formats.py`. Machine: {machine_line(fp)}. Every MatMul, "
        "the tied head included, in one format; perplexity on 16 windows of 256 tokens of "
        "*Persuasion* (lower is better); decode on `cpu-ort-llm`, all rows in the same "
        "interleaved rounds against fp32.",
        "",
        "| format | perplexity | vs fp32 | decode ms/token | decode speedup | size MB |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in sorted(rows.items(), key=lambda item: item[0] != "fp32"):  # fp32 first
        lines.append(
            f"| {name} | {r['perplexity']:.2f} | {r['perplexity'] / base['perplexity'] - 1:+.1%} "
            f"| {r['phases_ms']['decode_ms_per_token']:.2f} | {1 / r['ratio']:.2f}x "
            f"| {r['size_mb']:.0f} |"
        )
    path.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
