"""SmolLM2-135M's KV-cache graph: which graph rewrites make decoding faster, measured.

`python benchmarks/llm_fusion.py` (after `make examples`). From the fp32 export (its tied head
made a constant of its own, ``fold_weight_transposes``), each rewrite is applied alone and in
combination, in fp32 and with every MatMul 4-bit (MatMulNBits, blocks of 32, symmetric):

- `onnxscript optimize_for_ort`: onnxscript's whole ORT fusion pass (norms, rotary, attention
  as MultiHeadAttention), what ``kernels.fusion`` applies to encoders;
- `norms + rotary`: ``kernels.fusion.fuse_decoder``, what ``cpu-ort-llm`` applies;
- `packed`: ``kernels.fusion.pack_siblings`` (q, k, v and gate, up as one product each),
  applied after precision;
- `norms + rotary, packed`: both, tightfit's graph on ``cpu-ort-llm`` before attention was
  exported as one operator;
- `GroupQueryAttention (rotary inside) + norms`: each layer's attention exported as ONNX
  Runtime's GroupQueryAttention (``kernels.export.attention_for``: the cache's append and the
  rotary embedding inside it), then ``fuse_decoder``; packed (the operator then reads the
  packed q/k/v product whole), tightfit's graph on ``cpu-ort-llm``.

Decode ms per token on `cpu-ort-llm`, all graphs in the same interleaved rounds against the
plain export (`measure_jointly`). Every graph's logits are checked against the export's on one
prompt.

Writes benchmarks/results/llm_fusion.{json,md} with the machine fingerprint.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._fingerprint import fingerprint, machine_line, write_result  # noqa: E402


def main() -> None:
    import logging

    import onnx

    from tightfit._ort import predict
    from tightfit.config import load_config
    from tightfit.evaluators import input_feed, measure_jointly
    from tightfit.hardware_profiles import get_profile
    from tightfit.kernels.export import export_for, fold_weight_transposes
    from tightfit.kernels.fusion import _fuse_with_onnxscript, fuse_decoder, pack_siblings
    from tightfit.kernels.quantization import _quantize_nbits
    from tightfit.workspace import Setup, Workspace

    for name in ("onnxruntime.quantization", "onnx_ir", "onnxscript"):
        logging.getLogger(name).setLevel(logging.ERROR)
    profile = get_profile("cpu-ort-llm")
    # the plain export: fusion off, so the workspace leaves the graph as exported
    plain_profile = profile.model_copy(update={"graph_fusion": "off"})
    config = load_config(ROOT / "examples" / "smollm2.yaml")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        ws = Workspace(Setup.of(config, plain_profile, tmp / "w"))
        export = fold_weight_transposes(ws.baseline_onnx, tmp / "export.onnx")
        graphs: dict[str, Path] = {"export": export}
        full, _ = _fuse_with_onnxscript(export)
        assert full is not None
        onnx.save(full, str(tmp / "ort.onnx"))
        graphs["onnxscript optimize_for_ort"] = tmp / "ort.onnx"
        decoder, counts = fuse_decoder(export)
        assert decoder is not None
        onnx.save(decoder, str(tmp / "decoder.onnx"))
        graphs["norms + rotary"] = tmp / "decoder.onnx"
        example = (torch.from_numpy(ws.data.validation["input_ids"][:1]),)
        gqa = export_for(profile, ws.model, example, ["input_ids"], tmp / "gqa-export.onnx")
        gqa = fold_weight_transposes(gqa, tmp / "gqa-folded.onnx")
        gqa_decoder, gqa_counts = fuse_decoder(gqa)
        assert gqa_decoder is not None and gqa_counts.get("GroupQueryAttention")
        onnx.save(gqa_decoder, str(tmp / "gqa.onnx"))
        graphs[GQA] = tmp / "gqa.onnx"
        rows: dict[str, dict[str, Any]] = {}
        models: dict[str, Path] = {}
        for name, path in graphs.items():
            for bits in (32, 4):
                src = path
                if bits == 4:
                    src = tmp / f"{path.stem}-q4.onnx"
                    _quantize_nbits(path, src, None)
                label = f"{name}, {'fp32' if bits == 32 else 'int4'}"
                models[label] = src
                if name != "onnxscript optimize_for_ort":
                    packed = tmp / f"{src.stem}-packed.onnx"
                    made = pack_siblings(src, packed)
                    models[f"{label}, packed"] = packed
                    rows[f"{label}, packed"] = {"packed_matmuls": made}
        ids = {"input_ids": ws.data.validation["input_ids"][:2]}
        reference = {b: predict(models[f"export, {b}"], ids) for b in ("fp32", "int4")}
        for label, path in models.items():
            graph = onnx.load(str(path), load_external_data=False).graph
            ref = reference["int4" if "int4" in label else "fp32"]
            rows.setdefault(label, {}).update(
                nodes=len(graph.node),
                max_logit_error=float(np.abs(predict(path, ids) - ref).max()),
            )
        shapes = {"input_ids": (profile.generation.prompt_tokens,)}  # type: ignore[union-attr]
        feed = input_feed(shapes, {"input_ids": "int64"}, profile, seed=0)
        others = [n for n in models if n != "export, fp32"]
        results = measure_jointly([models[n] for n in others], export, profile, feed)
        rows["export, fp32"].update(phases_ms=results[0].baseline_phases_ms, ratio=1.0)
        for name, result in zip(others, results, strict=True):
            rows[name].update(
                phases_ms=result.phases_ms, ratio=result.ratio, ratio_ci=list(result.ratio_ci)
            )
    result = {"fingerprint": fingerprint(), "decoder_fusions": gqa_counts, "rows": rows}
    write_result("llm_fusion", result, write_markdown)


GQA = "GroupQueryAttention (rotary inside) + norms"


def write_markdown(result: dict, path: Path) -> None:
    fp, rows = result["fingerprint"], result["rows"]
    lines = [
        "# SmolLM2-135M's KV-cache graph: graph rewrites and decode speed",
        "",
        f"`python benchmarks/llm_fusion.py`. Machine: {machine_line(fp)}. Decode on "
        "`cpu-ort-llm` (128-token prompt, 32 new tokens, 2 threads), every graph in the same "
        "interleaved rounds against the fp32 export; int4 is MatMulNBits (blocks of 32, "
        f"symmetric) on every MatMul. Decoder fusions: {result['decoder_fusions']}.",
        "",
        "| graph | nodes | decode ms/token | speedup over the fp32 export | max logit error |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, r in sorted(rows.items(), key=lambda item: _order(item[0])):
        lines.append(
            f"| {name} | {r['nodes']} | {r['phases_ms']['decode_ms_per_token']:.2f} "
            f"| {1 / r['ratio']:.2f}x | {r['max_logit_error']:.2g} |"
        )
    path.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def _order(label: str) -> tuple[int, int, bool]:
    """export, optimize_for_ort, norms + rotary; fp32 before int4; unpacked before packed."""
    graphs = ("export", "onnxscript optimize_for_ort", "norms + rotary", GQA)
    graph = next(i for i, g in enumerate(graphs) if label.startswith(g + ","))
    return graph, int("int4" in label), label.endswith("packed")


if __name__ == "__main__":
    main()
