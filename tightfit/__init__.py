"""tightfit: hardware-aware compression search (pruning, low-rank, bit-widths) measured on target."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["__version__", "export", "load_config", "run_search"]


def __getattr__(name: str) -> Any:  # heavy imports stay lazy: `import tightfit` is fast
    if name == "run_search":
        from tightfit.runs import run_search

        return run_search
    if name == "load_config":
        from tightfit.config import load_config

        return load_config
    if name == "export":
        from tightfit.runs.export import export

        return export
    raise AttributeError(name)
