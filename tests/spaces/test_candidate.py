from __future__ import annotations

from tightfit.spaces import Candidate


def test_json_round_trip_and_noops_dropped() -> None:
    c = Candidate(
        base_model="abc",
        prune={"b": 0.25, "a": 0.0},
        rank={"x": 1.0, "y": 0.5},
        bits={"z": 32, "w": 8},
        seed=3,
    )
    assert c.prune == {"b": 0.25} and c.rank == {"y": 0.5} and c.bits == {"w": 8}
    again = Candidate.from_json(c.to_json())
    assert again == c and again.seed == 3


def test_params_round_trip() -> None:
    c = Candidate(
        base_model="m", prune={"layer1.conv1": 0.5}, rank={"fc": 0.25}, bits={"stem.0": 8}
    )
    params = c.to_params()
    assert params == {"layer1.conv1.prune_ratio": 0.5, "fc.rank": 0.25, "stem.0.bits": 8}
    assert Candidate.from_params("m", params) == c


def test_baseline() -> None:
    assert Candidate(base_model="m", prune={"a": 0.0}).is_baseline
    assert not Candidate(base_model="m", bits={"a": 8}).is_baseline
