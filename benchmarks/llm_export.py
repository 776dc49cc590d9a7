"""What onnxscript's optimizer costs in an LLM export: `python benchmarks/llm_export.py`.

Every candidate of a generation search is exported once as a KV-cache step
(``tightfit.kernels.export.export_onnx(kv_cache=True)``, dynamo, ``optimize=True``). This
exports SmolLM2-135M (``make examples``) once with onnxscript's optimizer and once without,
times each, and measures one decode step (cache length 128) of both graphs under ONNX Runtime
with all graph optimizations, in interleaved rounds, so the two graphs' speed is compared as a
ratio measured in one run. Writes benchmarks/results/llm_export.{json,md} with the machine
fingerprint.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._fingerprint import fingerprint, machine_line, write_result  # noqa: E402

ROUNDS = 30
CACHE = 128


def main() -> None:
    import numpy as np
    import onnx
    import onnxruntime as ort
    import torch

    from tightfit.examples.smollm2 import pretrained_smollm2
    from tightfit.kernels.export import export_onnx

    model = pretrained_smollm2()
    tmp = Path(tempfile.mkdtemp())
    export = torch.onnx.export
    result: dict = {"machine": fingerprint(), "model": "SmolLM2-135M-Instruct", "cache": CACHE}
    for optimize in (False, True):

        def forced(*args, _optimize=optimize, **kwargs):  # type: ignore[no-untyped-def]
            return export(*args, **{**kwargs, "optimize": _optimize})

        torch.onnx.export = forced
        try:
            start = time.perf_counter()
            ids = torch.ones(1, 4, dtype=torch.long)
            export_onnx(model, (ids,), ["input_ids"], tmp / f"{optimize}.onnx", kv_cache=True)
            seconds = time.perf_counter() - start
        finally:
            torch.onnx.export = export
        graph = onnx.load(str(tmp / f"{optimize}.onnx"), load_external_data=False)
        result[f"optimize={optimize}"] = {"export_s": seconds, "nodes": len(graph.graph.node)}
        print(f"optimize={optimize}: export {seconds:.0f} s, {len(graph.graph.node)} nodes")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = 2
    sessions = {
        o: ort.InferenceSession(str(tmp / f"{o}.onnx"), options, providers=["CPUExecutionProvider"])
        for o in (False, True)
    }
    feeds = {}
    for i in sessions[True].get_inputs():
        if i.name == "input_ids":
            feeds[i.name] = np.ones((1, 1), np.int64)
        else:  # batch 1, CACHE past tokens
            dims = [1 if d == "batch" else CACHE if isinstance(d, str) else d for d in i.shape]
            feeds[i.name] = np.zeros(dims, np.float32)
    logits = {o: s.run(None, feeds)[0] for o, s in sessions.items()}
    result["max_logit_difference"] = float(np.abs(logits[True] - logits[False]).max())
    times: dict[bool, list[float]] = {False: [], True: []}
    for r in range(ROUNDS):
        for o in (False, True) if r % 2 else (True, False):
            start = time.perf_counter()
            sessions[o].run(None, feeds)
            times[o].append(time.perf_counter() - start)
    for o in (False, True):
        result[f"optimize={o}"]["decode_step_ms"] = 1e3 * float(np.median(times[o]))
    ratio = float(np.median(times[False]) / np.median(times[True]))
    result["decode_ratio_unoptimized_over_optimized"] = ratio
    write_result("llm_export", result, write_markdown)


def write_markdown(result: dict, path: Path) -> None:
    off, on = result["optimize=False"], result["optimize=True"]
    m = result["machine"]
    lines = [
        "# The LLM export with and without onnxscript's optimizer (SmolLM2-135M KV-cache step)",
        "",
        f"Machine: {machine_line(m)}. `python benchmarks/llm_export.py`; "
        f"decode step at cache length {result['cache']}, batch 1, 2 threads, median of {ROUNDS} "
        "interleaved runs.",
        "",
        "| export | export time | nodes | decode step |",
        "| --- | ---: | ---: | ---: |",
        f"| optimize=True (today) | {on['export_s']:.0f} s | {on['nodes']} "
        f"| {on['decode_step_ms']:.2f} ms |",
        f"| optimize=False | {off['export_s']:.0f} s | {off['nodes']} "
        f"| {off['decode_step_ms']:.2f} ms |",
        "",
        f"Decode ratio unoptimized / optimized: "
        f"{result['decode_ratio_unoptimized_over_optimized']:.3f}; largest logit difference "
        f"{result['max_logit_difference']:.2g}.",
        "",
    ]
    path.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
