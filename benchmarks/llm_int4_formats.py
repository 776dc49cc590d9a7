"""SmolLM2-135M: MatMulNBits' block size and symmetry, measured (issue 27's "int4: block size,
symmetric or not").

`python benchmarks/llm_int4_formats.py` (after `make examples`). Every MatMul of the fp32
KV-cache export, the tied head included (``fold_weight_transposes``), is made 4-bit with one
format per row; 8-bit weight-only (blocks of 32) is the reference row. Perplexity: the
example's 16 windows of 256 tokens of *Persuasion*; decode ms per token on `cpu-ort-llm`, all
rows in the same interleaved rounds against the fp32 export (`measure_jointly`). The graphs are
the plain export's (``graph_fusion: off``), so the rows compare formats and nothing else.

Three more 4-bit grids from ONNX Runtime's own quantizers, asymmetric in blocks of 32:
``k-quant`` (llama.cpp's searched scale and minimum, integer zero point), ``HQQ`` (half-quadratic
optimised scale and a float zero point) and ``min-max, float zero point`` (HQQ's quantizer
without its optimisation and with its zero point left unrounded: Q4_1's own grid, on which
SmolLM2's projections lie exactly, since the model was de-quantized from Q4_1). The two float
zero-point rows get ``accuracy_level=4`` set as the others have it.

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
    # the plain export: fusion off, so the workspace leaves the graph as exported
    profile = get_profile("cpu-ort-llm").model_copy(update={"graph_fusion": "off"})
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
        for name, algorithm in ORT_ALGORITHMS.items():
            path = tmp / f"{len(models)}.onnx"
            t0 = time.perf_counter()
            _ort_algorithm(folded, path, algorithm)
            models[name] = path
            rows[name] = {"bits": 4, "block_size": 32, "symmetric": False, "algorithm": algorithm,
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


#: ONNX Runtime's other 4-bit quantizers, asymmetric in blocks of 32 (see the module's docstring)
ORT_ALGORITHMS = {
    "int4 b32 k-quant": "k_quant",
    "int4 b32 HQQ, float zero point": "hqq",
    "int4 b32 min-max, float zero point (Q4_1's grid)": "minmax",
}


def _ort_algorithm(src: Path, dst: Path, algorithm: str) -> None:
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        HQQWeightOnlyQuantConfig,
        HQQWeightOnlyQuantizer,
        KQuantWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    class MinMax(HQQWeightOnlyQuantizer):  # HQQ's grid before its optimisation, zero unrounded
        def quantize_internal(self, tensor, bits=4, channel_wise=True, group_size=64,  # type: ignore[no-untyped-def]
                              optimize=True, round_zero=True, axis=1):  # fmt: skip
            return super().quantize_internal(
                tensor, bits, channel_wise, group_size, optimize=False, round_zero=False, axis=axis
            )

    if algorithm == "k_quant":
        config: Any = KQuantWeightOnlyQuantConfig()
    else:
        config = HQQWeightOnlyQuantConfig(block_size=32, bits=4)
    quantizer = MatMulNBitsQuantizer(
        onnx.load(str(src)), block_size=32, is_symmetric=False, accuracy_level=4,
        algo_config=config,
    )  # fmt: skip
    if algorithm == "minmax":
        quantizer.node_quantizer = MinMax(config)
    quantizer.process()
    model = quantizer.model.model
    for node in model.graph.node:  # HQQ's quantizer writes no accuracy level
        if node.op_type == "MatMulNBits" and not any(
            a.name == "accuracy_level" for a in node.attribute
        ):
            node.attribute.append(onnx.helper.make_attribute("accuracy_level", 4))
    quantizer.model.save_model_to_file(str(dst), use_external_data_format=False)


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
