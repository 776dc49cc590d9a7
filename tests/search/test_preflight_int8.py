"""The int8 settings' choice (``int8_format`` / ``activation_type: auto``): pure logic; the
measurement itself runs in tests/search/test_int8_format.py."""

from __future__ import annotations

from tightfit.hardware_profiles import get_profile
from tightfit.search._preflight import choose_int8, int8_variants


def _m(ms: float, acc: float) -> dict[str, float]:
    return {"latency_ms": ms, "accuracy": acc}


def test_the_fastest_feasible_variant_wins_by_the_margin() -> None:
    ok = lambda m: m["accuracy"] >= 0.9  # noqa: E731
    measured = {"static": _m(10.0, 0.95), "static_s8s8": _m(8.0, 0.95), "dynamic": _m(9.0, 0.95)}
    assert choose_int8(measured, "static", ok, 0.02) == "static_s8s8"
    # faster by less than the margin: the default stays
    assert choose_int8(
        {"static": _m(10.0, 0.95), "dynamic": _m(9.9, 0.95)}, "static", ok, 0.02
    ) == ("static")
    # the fastest breaks the constraint (MiniLM's static int8 broke its probe): not chosen
    measured["static_s8s8"] = _m(5.0, 0.5)
    assert choose_int8(measured, "static", ok, 0.02) == "dynamic"
    # the default breaks it and another does not: the other, even if slower
    assert choose_int8({"static": _m(5.0, 0.5), "dynamic": _m(9.0, 0.95)}, "static", ok, 0.02) == (
        "dynamic"
    )
    # none meets it: the fastest by the margin, as without a constraint
    assert choose_int8({"static": _m(9.0, 0.5), "dynamic": _m(5.0, 0.5)}, "static", ok, 0.02) == (
        "dynamic"
    )


def test_the_variants_follow_the_profile() -> None:
    cpu = get_profile("cpu-ort")
    q = cpu.quantization
    assert list(int8_variants(cpu)) == ["static", "static_s8s8", "dynamic"]
    assert int8_variants(cpu)["static"] == ("static", "QUInt8")  # auto: U8S8 first
    pinned = cpu.model_copy(
        update={"quantization": q.model_copy(update={"activation_type": "QInt8"})}
    )
    assert int8_variants(pinned) == {"static": ("static", "QInt8"), "dynamic": ("dynamic", "QInt8")}
    dynamic = cpu.with_int8_format("dynamic")
    assert int8_variants(dynamic) == {
        "dynamic": ("dynamic", "QUInt8"),
        "dynamic_s8s8": ("dynamic", "QInt8"),
    }
