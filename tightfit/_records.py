"""Shared base for tightfit's records: frozen, strict, JSON round-trip, errors that name fields."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from tightfit._naming import did_you_mean


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
        elif not part.isidentifier():
            out += f"[{part!r}]"  # a key that is no name: quote it so the path stays readable
        else:
            out += f".{part}" if out else part
    return out or "(top level)"


def _fields_at(root: type[BaseModel] | None, loc: Sequence[int | str]) -> list[str]:
    """The field names of the record found at ``loc`` inside ``root`` (for "valid: ..." hints)."""
    model: Any = root
    for part in loc:
        if isinstance(part, int) or model is None:
            continue
        field = getattr(model, "model_fields", {}).get(part)
        annotation = field.annotation if field is not None else None
        model = (
            annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel)
            else None
        )
    return list(getattr(model, "model_fields", {})) if model is not None else []


def describe_validation_error(
    source: str, err: ValidationError, limit: int = 5, root: type[BaseModel] | None = None
) -> str:
    """One message per problem, each ``<source>: <field> <what is wrong>``."""
    lines = []
    for item in err.errors()[:limit]:
        where = field_path(item["loc"])
        msg = item["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        got = item.get("input")
        if item["type"] == "extra_forbidden":
            valid = _fields_at(root, item["loc"][:-1])
            hint = did_you_mean(str(item["loc"][-1]), valid)
            msg = (
                f"is not a known field{hint} (valid: {', '.join(valid)})"
                if valid
                else "is not a known field"
            )
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
