"""The machine a number was measured on: CPU model and instruction sets, GPU, driver, clocks.

Below every other part: kernels (int8 format choices), evaluators (a latency's environment) and
benchmarks (their results' fingerprint) all read it.
"""

from __future__ import annotations

import os
import platform
import subprocess
from functools import cache
from pathlib import Path

CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "amx_bf16", "fma", "f16c")


@cache
def cpu_environment() -> dict[str, str]:
    env = {
        "cpu": platform.processor() or "unknown",
        "cpu_flags": "",
        "cpu_count": str(os.cpu_count()),
    }
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return env
    names = [ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")]
    flags = [set(ln.split(":", 1)[1].split()) for ln in lines if ln.startswith("flags")]
    if names:
        env["cpu"] = names[0]
    if flags:
        env["cpu_flags"] = ",".join(f for f in CPU_FLAGS if f in flags[0])
    return env


@cache
def gpu_environment() -> dict[str, str]:
    """GPU model, driver, CUDA and clocks (nvidia-smi), where a GPU is visible."""
    out: dict[str, str] = {}
    try:
        import torch

        if torch.cuda.is_available():
            out["gpu"] = torch.cuda.get_device_name(0)
            cap = torch.cuda.get_device_capability(0)
            out["gpu_capability"] = f"{cap[0]}.{cap[1]}"
            out["cuda"] = str(torch.version.cuda)
    except ImportError:  # pragma: no cover
        pass
    fields = "driver_version,clocks.sm,clocks.mem,clocks.max.sm,power.limit"
    try:
        text = subprocess.run(
            ["nvidia-smi", f"--query-gpu={fields}", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.splitlines()
    except (OSError, subprocess.TimeoutExpired):
        text = []
    if text:
        for key, value in zip(fields.split(","), text[0].split(","), strict=False):
            out[key.replace(".", "_")] = value.strip()
    return out
