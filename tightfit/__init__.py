"""tightfit: hardware-aware compression search (pruning, low-rank, bit-widths) measured on target.

The Python API beside the CLI (``tightfit search`` / ``tightfit export``)::

    import tightfit

    outcome = tightfit.run_search("examples/digits.yaml")   # or a SearchConfig, or a dict
    print(outcome.front("cpu-ort"))                          # the feasible Pareto front
    tightfit.export(outcome.workdir, pick="knee", out="engines/")

Heavy parts (torch, Ray, MLflow) load on first use: ``import tightfit`` stays fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what the lazy attributes below are, for IDEs and type checkers
    from tightfit.config import SearchConfig, as_config, load_config
    from tightfit.runs import run_search
    from tightfit.runs.export import export
    from tightfit.search import SearchOutcome

__version__ = "0.1.0"
__all__ = [
    "SearchConfig",
    "SearchOutcome",
    "__version__",
    "as_config",
    "export",
    "load_config",
    "run_search",
]

_LAZY = {
    "run_search": "tightfit.runs",
    "export": "tightfit.runs.export",
    "SearchConfig": "tightfit.config",
    "as_config": "tightfit.config",
    "load_config": "tightfit.config",
    "SearchOutcome": "tightfit.search",
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'tightfit' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_LAZY[name]), name)
