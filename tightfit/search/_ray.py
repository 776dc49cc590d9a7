"""Ray execution: a local Ray by default, the two stages as tasks, measurements pinned.

A latency task asks for the profile's Ray resources (one slot per device on a cluster) and for
``reserve_cpus`` CPUs, so that no other tightfit task runs on the cores it measures on. Locally
``reserve_cpus: all`` is every CPU Ray was given: compression and accuracy tasks wait while a
measurement runs.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from tightfit.config import SearchConfig
from tightfit.exceptions import ConfigError
from tightfit.hardware_profiles import HardwareProfile

log = logging.getLogger(__name__)

OBJECT_STORE_BYTES = 512 * 1024**2


def start_ray(config: SearchConfig) -> bool:
    """Start (or connect to) Ray; return True if this call started it."""
    import ray

    if ray.is_initialized():
        return False
    logging.getLogger("ray").setLevel(logging.ERROR)
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ["RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO"] = "0"
    if config.ray.address:
        ray.init(address=config.ray.address, logging_level=logging.WARNING, log_to_driver=False)
        return True
    # Local workers inherit this environment: let them import user modules from the cwd.
    paths = [str(Path.cwd()), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    resources: dict[str, float] = {}
    for profile in config.hardware_profiles():
        resources.update(profile.ray_resources)
    ray.init(
        num_cpus=config.ray.num_cpus or os.cpu_count() or 1,
        resources=resources or None,
        include_dashboard=False,
        object_store_memory=OBJECT_STORE_BYTES,
        logging_level=logging.WARNING,
        log_to_driver=False,
        configure_logging=True,
    )
    return True


def reserved_cpus(profile: HardwareProfile) -> float:
    """CPUs a measurement holds: a number, or every CPU of the smallest node that can host it."""
    import ray

    if profile.reserve_cpus != "all":
        return float(profile.reserve_cpus)
    sizes = [
        n["Resources"].get("CPU", 0.0)
        for n in ray.nodes()
        if n.get("Alive") and all(n["Resources"].get(k, 0) >= v for k, v in profile.ray_resources.items())
    ]
    return float(min(sizes)) if sizes else 1.0


def check_feasible(profile: HardwareProfile) -> None:
    """Stop before the first trial if no node offers the profile's resources (Ray would wait forever)."""
    import ray

    total = ray.cluster_resources()
    missing = {k: v for k, v in profile.ray_resources.items() if total.get(k, 0) < v}
    if missing:
        raise ConfigError(
            f"hardware profile '{profile.name}': no Ray node offers {missing}; start a node with "
            f"--resources='{{\"{next(iter(missing))}\": 1}}' or remove 'ray_resources' from the profile"
        )


def remote_functions() -> tuple[Any, Any]:
    """The two stages as Ray remote functions (system failures retried, never user errors)."""
    import ray

    from tightfit.search._evaluate import compress_and_score, measure

    compress_remote = ray.remote(num_cpus=1, max_retries=2)(compress_and_score)
    measure_remote = ray.remote(max_retries=2)(measure)
    return compress_remote, measure_remote


def error_text(exc: BaseException) -> str:
    """The user-level reason inside a Ray error (the worker's exception, first line)."""
    import ray.exceptions

    cause = exc
    if isinstance(exc, ray.exceptions.RayTaskError):
        inner = exc.as_instanceof_cause() if hasattr(exc, "as_instanceof_cause") else exc
        cause = getattr(exc, "cause", None) or inner
    text = f"{type(cause).__name__}: {cause}".strip()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return lines[0][:1000] if lines else type(exc).__name__
