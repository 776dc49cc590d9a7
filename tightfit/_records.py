"""Shared base for tightfit's records: frozen, strict, JSON round-trip, errors that name fields."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError


class Record(BaseModel):
    """A frozen record that refuses unknown fields and serialises to JSON."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    def to_json(self) -> str:
        return self.model_dump_json()

    @classmethod
    def from_json(cls, text: str) -> Any:
        return cls.model_validate_json(text)


def field_path(loc: Sequence[int | str]) -> str:
    """Turn pydantic's ``('space', 'prune', 'ratios', 2)`` into ``space.prune.ratios[2]``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part.startswith(("function-", "union[", "literal[", "list[", "dict[")):
            continue  # pydantic's internal validator names, not user fields
        else:
            out += f".{part}" if out else part
    return out or "(top level)"


def describe_validation_error(source: str, err: ValidationError, limit: int = 5) -> str:
    """One message per problem, each ``<source>: <field> <what is wrong>``."""
    lines = []
    for item in err.errors()[:limit]:
        where = field_path(item["loc"])
        msg = item["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        got = item.get("input")
        if item["type"] == "extra_forbidden":
            msg = "is not a known field (check its spelling)"
        elif item["type"] == "missing":
            msg = "is required"
        elif got is not None and "got" not in msg and not isinstance(got, dict):
            msg = f"{msg}, got {got!r}"
        msg = msg[0].lower() + msg[1:] if msg else msg
        sep = "" if msg.startswith("[") else " "  # "ratios[2] must be ...", from our validators
        lines.append(f"{source}: {where}{sep}{msg}")
    more = len(err.errors()) - limit
    if more > 0:
        lines.append(f"{source}: … and {more} more problem(s)")
    return "\n".join(lines)
