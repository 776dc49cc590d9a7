"""SmolLM2-135M: how much perplexity each part costs at 4 bits, one part at a time.

`python benchmarks/llm_sensitivity.py` (after `make examples`). In torch, each part's
projection weights are replaced by their 4-bit round trip as ONNX Runtime's MatMulNBits
quantizer rounds them (blocks of 32 along the input, symmetric: ``int4_error``, its own
function), the model is scored on the example's 16 held-out windows of *Persuasion*, and the
weights are put back. Parts: the tied head (and so the embedding), every projection, the
attention projections, the MLP projections, and each of the 30 blocks' seven projections.
Activations stay float here (the graph's MatMulNBits also rounds them to 8 bits in blocks),
so the numbers are the weights' share of what the ONNX graphs measure in ``llm.md``.

What it is for: a plan within +5% perplexity keeps the sensitive parts wider. This is the
per-block sensitivity scan of issue 27 as a measurement, not yet a search feature.

Writes benchmarks/results/llm_sensitivity.{json,md} with the machine fingerprint.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._fingerprint import fingerprint, machine_line, write_result  # noqa: E402


def main() -> None:
    from tightfit.examples.smollm2 import load_data, pretrained_smollm2
    from tightfit.kernels.bias_correction import int4_error
    from tightfit.task import perplexity

    torch.set_num_threads(2)
    model = pretrained_smollm2().model
    ids = torch.from_numpy(load_data()["validation"]["input_ids"])

    def score() -> float:
        with torch.no_grad():
            logits = model(ids).logits.numpy()
        return perplexity(logits, ids.numpy())

    def at_4_bits(linears: list[torch.nn.Linear]) -> float:
        saved = [lin.weight.data.clone() for lin in linears]
        for lin in linears:
            w = lin.weight.data.numpy().T  # the MatMul's [K, N]
            lin.weight.data = torch.from_numpy(np.ascontiguousarray((w + int4_error(w)).T))
        try:
            return score()
        finally:
            for lin, weight in zip(linears, saved, strict=True):
                lin.weight.data = weight

    def projections(block: torch.nn.Module, part: str = "all") -> list[torch.nn.Linear]:
        attn = [getattr(block.self_attn, f"{p}_proj") for p in "qkvo"]
        mlp = [getattr(block.mlp, f"{p}_proj") for p in ("gate", "up", "down")]
        return {"attention": attn, "mlp": mlp, "all": attn + mlp}[part]

    blocks = list(model.model.layers)
    t0 = time.perf_counter()
    baseline = score()
    rows: dict[str, float] = {"head (tied embedding)": at_4_bits([model.lm_head])}
    for part in ("all", "attention", "mlp"):
        rows[f"every block's {part} projections"] = at_4_bits(
            [lin for b in blocks for lin in projections(b, part)]
        )
    for i, block in enumerate(blocks):
        rows[f"block {i}"] = at_4_bits(projections(block))
    result = {
        "fingerprint": fingerprint(),
        "baseline": baseline,
        "perplexity": rows,
        "seconds": time.perf_counter() - t0,
    }
    write_result("llm_sensitivity", result, write_markdown)


def write_markdown(result: dict, path: Path) -> None:
    base = result["baseline"]
    rows = result["perplexity"]
    blocks = {k: v for k, v in rows.items() if k.startswith("block ")}
    ranked = sorted(blocks.items(), key=lambda kv: kv[1])
    lines = [
        "# SmolLM2-135M: perplexity with one part at 4 bits",
        "",
        f"`python benchmarks/llm_sensitivity.py`. Machine: {machine_line(result['fingerprint'])}."
        " In torch: each part's weights as MatMulNBits rounds them (blocks of 32, symmetric),"
        " activations float; 16 held-out windows of 256 tokens of *Persuasion*; baseline "
        f"perplexity {base:.2f}; {result['seconds']:.0f} s in all.",
        "",
        "| part at 4 bits | perplexity | vs baseline |",
        "| --- | ---: | ---: |",
    ]
    for name, value in rows.items():
        if not name.startswith("block "):
            lines.append(f"| {name} | {value:.2f} | {value / base - 1:+.1%} |")
    total = sum(v / base - 1 for v in blocks.values())
    lines += [
        "",
        f"Blocks one at a time (the sum of their increases: {total:+.1%}), least sensitive first:",
        "",
        "| block | perplexity | vs baseline |",
        "| --- | ---: | ---: |",
    ]
    lines += [f"| {k[6:]} | {v:.2f} | {v / base - 1:+.2%} |" for k, v in ranked]
    path.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
