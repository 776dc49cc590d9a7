"""The machine fingerprint written next to every benchmark result."""

from __future__ import annotations

import json
import platform
from collections.abc import Callable
from pathlib import Path


def fingerprint() -> dict[str, str]:
    """The CPU as latency measurements record it, the platform, and the library versions."""
    from tightfit._machine import cpu_environment, gpu_environment
    from tightfit.runs.export import library_versions

    return {
        **cpu_environment(),
        **gpu_environment(),
        "platform": platform.platform(),
        **library_versions(),
    }


def machine_line(fp: dict[str, str]) -> str:
    """The fingerprint as one line of a result's markdown: the CPU, its cores and flags (AVX2
    and AMX machines differ there), and the runtime versions."""
    return (
        f"{fp.get('cpu', '?')} ({fp.get('cpu_count', '?')} cores; {fp.get('cpu_flags', '?')}), "
        f"torch {fp.get('torch', '?')}, onnxruntime {fp.get('onnxruntime', '?')}"
    )


def write_result(name: str, result: dict, markdown: Callable[[dict, Path], None]) -> None:
    """``result`` as ``benchmarks/results/<name>.json``, and its markdown beside it, written
    from that JSON by ``markdown`` (so a table can be regenerated without rerunning)."""
    out = Path(__file__).resolve().parent / "results"
    (out / f"{name}.json").write_text(json.dumps(result, indent=1))
    markdown(result, out / f"{name}.md")
