"""TensorRT plans: what an exported plan is bound to, and loading one only where it was built."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tightfit.exceptions import TightfitError
from tightfit.runs._files import sha256

PLAN_TAGS = ("gpu", "gpu_capability", "tensorrt", "cuda", "driver_version")


def plan_tags() -> dict[str, str]:
    """What a TensorRT plan is bound to: GPU model, TensorRT, CUDA and driver versions."""
    import tensorrt as trt

    from tightfit._machine import gpu_environment

    env = {**gpu_environment(), "tensorrt": trt.__version__}
    return {k: env.get(k, "unknown") for k in PLAN_TAGS}


class PlanMismatchError(TightfitError):
    pass


def check_plan(manifest: dict[str, Any], here: dict[str, str]) -> None:
    """Refuse a plan built for another GPU / TensorRT / CUDA / driver than ``here``."""
    built = manifest.get("plan", {})
    diffs = [
        f"{k}: plan {built.get(k)!r}, here {here.get(k)!r}"
        for k in PLAN_TAGS
        if built.get(k) != here.get(k)
    ]
    if diffs:
        raise PlanMismatchError(
            "this TensorRT plan was built for other hardware or software ("
            + "; ".join(diffs)
            + "); rebuild it here with 'tightfit export', or ship model.onnx and build on the target"
        )


def load_plan(engine_dir: Path) -> bytes:
    """The plan of an exported engine folder, after checking it was built for this machine.

    A plan is native code for one GPU model and TensorRT version; loading another's fails or,
    worse, runs slower kernels. Only plans tightfit wrote (sha256 in the manifest) are loaded.
    """
    engine_dir = Path(engine_dir)
    manifest = json.loads((engine_dir / "manifest.json").read_text())
    if "model.plan" not in manifest.get("files", {}):
        raise TightfitError(
            f"{engine_dir} has no TensorRT plan (its profile is not a TensorRT one)"
        )
    check_plan(manifest, plan_tags())
    plan = engine_dir / "model.plan"
    if sha256(plan) != manifest["files"]["model.plan"]["sha256"]:
        raise TightfitError(f"{plan} does not match the sha256 in its manifest; export it again")
    return plan.read_bytes()
