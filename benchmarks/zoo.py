"""The model-family conformance suite at real sizes (224² images, 128-token text), measured.

For every family of ``tests/zoo.py``: discover the space (with its refusals), apply each kernel
as a uniform candidate (prune 25% and 50%, low rank, int8, 4-bit, and prune 50% + int8), export,
run in ONNX Runtime and compare with the compressed torch model; then measure prune 50%, int8 and
both against the plain export in the same interleaved rounds on the profile's runtime.

Writes ``benchmarks/results/zoo.{json,md}`` with the machine's fingerprint, and with
``--readme`` rewrites the supported-families table in README.md from the result.

    .venv/bin/python benchmarks/zoo.py                 # every family (about 30 minutes on 2 cores)
    .venv/bin/python benchmarks/zoo.py --families vit bert --size tiny
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._fingerprint import fingerprint  # noqa: E402

MEASURED = ("prune 50%", "int8", "prune 50% + int8")
BOTH = {"prune 50% + int8": {"prune_ratio": 0.5, "bits": 8}}  # beside tests/zoo.py's CASES
README_START, README_END = "<!-- zoo:start -->", "<!-- zoo:end -->"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--profile", default="cpu-ort")
    parser.add_argument("--size", default="real", choices=["tiny", "real"])
    parser.add_argument("--families", nargs="*", help="default: all")
    parser.add_argument("--readme", action="store_true", help="rewrite README's family table")
    parser.add_argument(
        "--update",
        action="store_true",
        help="replace the given families' rows in the existing result (same machine only)",
    )
    args = parser.parse_args()

    from tests import zoo
    from tightfit.evaluators import measure_jointly
    from tightfit.hardware_profiles import get_profile

    warnings.simplefilter("ignore")
    logging.getLogger().setLevel(logging.ERROR)
    profile = get_profile(args.profile)
    cases = {**zoo.CASES, **BOTH}
    rows = []
    for name in args.families or list(zoo.FAMILIES):
        family = zoo.FAMILIES[name]
        t0 = time.perf_counter()
        tmp = Path(tempfile.mkdtemp(prefix=f"tightfit-zoo-{name}-"))
        try:
            c = zoo.conform(family, args.size, profile, tmp, n=16, cases=cases)
        except Exception as e:  # the model itself did not build or export: say so, go on
            rows.append({"family": name, "group": family.group, "setup_error": repr(e)[:300]})
            print(f"{name}: SET-UP FAILED: {e!r}"[:300], flush=True)
            continue
        build_s = time.perf_counter() - t0
        measured = [k for k in MEASURED if c.outcomes[k].status == "ok"]
        t1 = time.perf_counter()
        results = measure_jointly(
            [c.outcomes[k].onnx for k in measured], c.baseline_onnx, profile, c.feed_one, seed=0
        )
        row = {
            "family": name,
            "group": family.group,
            "units": c.counts,
            "refused": [r.to_dict() for r in c.refused],
            "outcomes": {
                k: {"status": o.status, "why": o.why, "units": o.units, "error": o.error}
                for k, o in c.outcomes.items()
            },
            "baseline_ms": results[0].baseline_median_ms if results else None,
            "speedup": {k: r.speedup for k, r in zip(measured, results, strict=True)},
            "ratio_ci": {k: list(r.ratio_ci) for k, r in zip(measured, results, strict=True)},
            "build_s": round(build_s, 1),
            "measure_s": round(time.perf_counter() - t1, 1),
        }
        rows.append(row)
        print(_row_line(row), flush=True)
    result = {"profile": profile.name, "size": args.size, "rows": rows, "machine": fingerprint()}
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    stem = "zoo" if args.size == "real" else f"zoo_{args.size}"
    if args.update and (out / f"{stem}.json").exists():
        old = json.loads((out / f"{stem}.json").read_text())
        if old["machine"] != result["machine"]:
            raise SystemExit("--update: the existing result is from another machine; rerun all")
        new = {row["family"]: row for row in rows}
        result["rows"] = [new.pop(row["family"], row) for row in old["rows"]] + list(new.values())
    (out / f"{stem}.json").write_text(json.dumps(result, indent=1))
    (out / f"{stem}.md").write_text(_markdown(result))
    if args.readme:
        _rewrite_readme(result)
    print(_markdown(result))


def _cell(o: dict, refused: int = 0) -> str:
    """``ok``, with how many parts that kernel left out (refused at discovery) if any."""
    if o["status"] == "ok":
        return f"ok ({refused} refused)" if refused else "ok"
    if o["status"] == "none":
        return "refused" if "not" in o["why"] or "fails" in o["why"] else "n/a"
    return "**FAILED**"


def _refused(row: dict, case: str) -> int:
    """Refusals that concern ``case``'s kernels (and those no kernel acts on: knob ``*``)."""
    from tests import zoo

    knobs = {zoo.KNOB[arg] for arg in {**zoo.CASES, **BOTH}[case]} | {"*"}
    return sum(r["knob"] in knobs for r in row["refused"])


def _row_line(row: dict) -> str:
    cells = ", ".join(f"{k}: {_cell(o)}" for k, o in row["outcomes"].items())
    speed = ", ".join(f"{k} {v:.2f}x" for k, v in row["speedup"].items())
    return f"{row['family']}: {cells} | {speed} | {row['build_s']}+{row['measure_s']} s"


def _support_table(result: dict) -> list[str]:
    ran = [row for row in result["rows"] if "outcomes" in row]
    kernels = list(ran[0]["outcomes"]) if ran else []
    lines = [
        "| family | kind | " + " | ".join(kernels) + " |",
        "| --- | --- | " + " | ".join("---" for _ in kernels) + " |",
    ]
    for row in result["rows"]:
        if "outcomes" not in row:
            lines.append(
                f"| {row['family']} | {row['group']} | "
                + " | ".join("**SET-UP FAILED**" for _ in kernels)
                + " |"
            )
            continue
        cells = [_cell(row["outcomes"][k], _refused(row, k)) for k in kernels]
        lines.append(f"| {row['family']} | {row['group']} | " + " | ".join(cells) + " |")
    return lines


def _markdown(r: dict) -> str:
    m = r["machine"]
    size = "224² images, 128-token text" if r["size"] == "real" else "tiny configs"
    lines = [
        f"# Model-family conformance, measured ({size}, batch 1, {r['profile']})",
        "",
        f"Machine: {m['cpu']} ({m['cpu_count']} cores; {m['cpu_flags']}), "
        f"onnxruntime {m['onnxruntime']}, torch {m.get('torch', '?')}",
        "",
        "Random weights (Hugging Face configs, no download; `tests/zoo.py`). Each kernel is "
        "applied to every unit it offers (uniform); `ok`: the candidate exports, runs in ONNX "
        "Runtime and its output is compared with the compressed torch model (error below); "
        "`refused`: decided when the space was discovered, with the reason (`ok (N refused)`: "
        "the candidate ran, and N parts were refused for that kernel); `n/a`: the kernel "
        "offers no such level here (4-bit applies to MatMul weights only). int8 is static "
        "(Q/DQ, calibrated on 16 samples): a search's `int8_format: auto` measures dynamic too "
        "and takes the faster. Speedups over the plain fp32 export, all measured in the same "
        "interleaved rounds. They show that each kernel runs and what it does alone; they are "
        "not searched candidates and the standard deployment recipe is not measured here, so "
        "they are no claim over it (that comparison: `digits_search.md`, `pretrained.md`).",
        "",
        *_support_table(r),
        "",
        "| family | fp32 ms | prune 50% | int8 | prune 50% + int8 | build s | measure s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in r["rows"]:
        if "outcomes" not in row:
            lines.append(f"| {row['family']} | set-up failed: {row['setup_error']} | | | | | |")
            continue
        sp = [f"{row['speedup'][k]:.2f}x" if k in row["speedup"] else "–" for k in MEASURED]
        base = f"{row['baseline_ms']:.2f}" if row["baseline_ms"] else "–"
        lines.append(
            f"| {row['family']} | {base} | " + " | ".join(sp) + f" | {row['build_s']} | "
            f"{row['measure_s']} |"
        )
    lines += [
        "",
        "Output error of each candidate (float kernels: max |onnx − torch| / max "
        "|torch|; quantized: 1 − median cosine with the float model):",
        "",
    ]
    for row in (row for row in r["rows"] if "outcomes" in row):
        errs = ", ".join(
            f"{k} {o['error']:.2g}" for k, o in row["outcomes"].items() if o["status"] == "ok"
        )
        lines.append(f"- {row['family']}: {errs}")
    lines += ["", "Refused up front, with the reason (first of each family's kinds):", ""]
    for row in (row for row in r["rows"] if "outcomes" in row):
        seen: dict[str, str] = {}
        for ref in row["refused"]:
            seen.setdefault(
                ref["reason"].split(":")[0], f"`{ref['path']}` ({ref['knob']}): {ref['reason']}"
            )
        for text in seen.values():
            lines.append(f"- {row['family']}: {text}")
        for k, o in row["outcomes"].items():
            if o["status"] == "failed":
                lines.append(f"- {row['family']}: **{k} FAILED**: {o['why']}")
    return "\n".join(lines) + "\n"


def _rewrite_readme(result: dict) -> None:
    readme = ROOT / "README.md"
    text = readme.read_text()
    if README_START not in text or README_END not in text:
        raise SystemExit(f"README.md has no {README_START} ... {README_END} block to rewrite")
    head, rest = text.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    table = "\n".join(_support_table(result))
    readme.write_text(f"{head}{README_START}\n{table}\n{README_END}{tail}")


if __name__ == "__main__":
    main()
