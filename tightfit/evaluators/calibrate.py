"""How noisy is this machine for a profile, and how many rounds does the protocol need here?

An A/A test: the same model measured against itself with the profile's protocol, several times,
each for ``max_rounds`` rounds. The true ratio is 1, so whatever spread the ratio shows is noise.
For each round count, the bootstrap CI half-width of the ratio (over the first rounds of each
repeat) says how precise a measurement of that many rounds is; the recommended ``rounds`` is
the smallest count whose half-width meets the target.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from pydantic import Field

from tightfit._records import Record
from tightfit.evaluators.latency import bootstrap_ci, measure_latency
from tightfit.hardware_profiles import HardwareProfile

ROUND_GRID = (3, 4, 6, 8, 12, 16, 20, 24, 32, 40, 48, 64)


class Calibration(Record):
    profile: str
    target_ci: float = Field(description="wanted 95% CI half-width, as a fraction of the ratio")
    recommended_rounds: int
    reached: bool = Field(description="whether some measured round count met the target")
    repeats: int
    rounds_measured: int
    iters_per_block: int
    model_ms: float = Field(description="median latency of the model measured")
    block_cv: float = Field(description="coefficient of variation of block medians (one model)")
    round_ratio_cv: float = Field(description="coefficient of variation of per-round A/A ratios")
    aa_ratio_error: float = Field(description="largest |median ratio - 1| over the repeats")
    ci_half_width: dict[int, float] = Field(description="rounds -> mean CI half-width (fraction)")
    environment: dict[str, str] = Field(default_factory=dict)
    measured_at: str = ""


def calibrate(
    profile: HardwareProfile,
    model: Path,
    feed: dict[str, np.ndarray],
    repeats: int = 3,
    max_rounds: int = 40,
    target_ci: float | None = None,
    seed: int = 0,
) -> Calibration:
    target = target_ci if target_ci is not None else profile.measurement.target_ci
    long = profile.model_copy(
        update={
            "measurement": profile.measurement.model_copy(
                update={
                    "rounds": max_rounds,
                    "max_rounds": max_rounds,
                    "budget_s": 1e9,
                    "target_ci": 1e-9,
                }
            )
        }
    )
    results = [measure_latency(model, model, long, feed, None, seed + i) for i in range(repeats)]
    ratios, block_medians = [], []
    for r in results:
        cand = [np.median(b) for b in r.samples_ms["candidate"]]
        base = [np.median(b) for b in r.samples_ms["baseline"]]
        ratios.append(np.array(cand) / np.array(base))
        block_medians.append(np.array(base))
    widths: dict[int, float] = {}
    for k in [g for g in ROUND_GRID if g <= max_rounds]:
        half = []
        for i, rs in enumerate(ratios):
            lo, hi = bootstrap_ci(rs[:k], seed + i)
            half.append((hi - lo) / 2 / float(np.median(rs[:k])))
        widths[k] = float(np.mean(half))
    # a bootstrap over fewer than 8 rounds understates the spread: never recommend fewer
    meeting = [k for k, w in widths.items() if w <= target and k >= 8]
    return Calibration(
        profile=profile.name,
        target_ci=target,
        recommended_rounds=min(meeting) if meeting else max_rounds,
        reached=bool(meeting),
        repeats=repeats,
        rounds_measured=max_rounds,
        iters_per_block=results[0].iters_per_block,
        model_ms=float(np.median([r.baseline_median_ms for r in results])),
        block_cv=float(np.median([np.std(b) / np.mean(b) for b in block_medians])),
        round_ratio_cv=float(np.median([np.std(r) / np.mean(r) for r in ratios])),
        aa_ratio_error=float(max(abs(np.median(r) - 1.0) for r in ratios)),
        ci_half_width=widths,
        environment=results[0].environment,
        measured_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    )


def calibrated_profile(profile: HardwareProfile, result: Calibration) -> HardwareProfile:
    """``profile`` with the recommended rounds and the calibration record saved in it."""
    measurement = profile.measurement.model_copy(
        update={
            "rounds": result.recommended_rounds,
            "max_rounds": max(profile.measurement.max_rounds, result.recommended_rounds),
            "target_ci": result.target_ci,
        }
    )
    record = result.model_dump(mode="json", exclude={"environment"})
    record["cpu"] = result.environment.get("cpu", "")
    record["gpu"] = result.environment.get("gpu", "")
    return profile.model_copy(update={"measurement": measurement, "calibration": record})
