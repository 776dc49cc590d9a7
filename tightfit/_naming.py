"""Registries by name: an unknown name lists the valid ones."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def unknown_name_message(kind: str, name: str, valid: Iterable[str]) -> str:
    """Return ``unknown <kind> 'x'; did you mean 'y'? valid: a, b, c``."""
    valid = sorted(valid)
    close = difflib.get_close_matches(name, valid, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return f"unknown {kind} '{name}'{hint} (valid: {', '.join(valid)})"
