"""The machine fingerprint written next to every benchmark result."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def fingerprint() -> dict[str, str]:
    from tightfit.runs.export import library_versions

    cpu = platform.processor() or "unknown"
    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and cpu in ("unknown", "", platform.machine()):
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                have = set(line.split(":", 1)[1].split())
                flags = " ".join(
                    sorted(f for f in have if f.startswith(("avx", "amx")) or f in ("fma", "f16c"))
                )
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cpu_flags": flags,
        "cpu_count": str(os.cpu_count()),
        "platform": platform.platform(),
        **library_versions(),
    }
