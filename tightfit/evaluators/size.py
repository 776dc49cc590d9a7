"""Size of the deployable file."""

from __future__ import annotations

from pathlib import Path


def size_mb(path: Path) -> float:
    """File size in megabytes (10^6 bytes), external data files included."""
    total = path.stat().st_size
    for extra in path.parent.glob(path.name + ".data"):
        total += extra.stat().st_size
    return total / 1e6
