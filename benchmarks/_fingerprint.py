"""The machine fingerprint written next to every benchmark result."""

from __future__ import annotations

import platform


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
