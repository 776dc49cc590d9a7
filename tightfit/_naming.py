"""Registries by name: an unknown name lists the valid ones."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def did_you_mean(name: str, valid: Iterable[str], n: int = 1) -> str:
    """``; did you mean 'y'?`` (up to ``n`` close names of ``valid``), or '' where none is."""
    close = difflib.get_close_matches(name, list(valid), n=n)
    return f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""


def unknown_name_message(kind: str, name: str, valid: Iterable[str]) -> str:
    """Return ``unknown <kind> 'x'; did you mean 'y'? valid: a, b, c``."""
    valid = sorted(valid)
    return f"unknown {kind} '{name}'{did_you_mean(name, valid)} (valid: {', '.join(valid)})"
