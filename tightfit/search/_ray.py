"""Ray execution: a local Ray by default; compression as tasks, measurement in an actor.

Measurements run in one long-lived ``LatencyBench`` actor per hardware profile, placed by the
profile's Ray resources (one slot per device on a cluster). An actor, not a task: a task takes a
pooled worker, and Ray then starts a replacement worker process whose start-up (imports) runs
beside the measurement and slowed it by up to 2x in our runs. The actor is started once and
stays warm. That no other tightfit work runs on the measured cores is the driver's rule: it
dispatches no compression task while a measurement is queued or running.
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
        ray.init(address=config.ray.address, logging_level=logging.ERROR, log_to_driver=False)
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
        logging_level=logging.ERROR,
        log_to_driver=False,
        configure_logging=True,
    )
    return True


def check_feasible(profile: HardwareProfile) -> None:
    """Stop before the first trial if no node offers the profile's resources (Ray would wait forever)."""
    import ray

    total = ray.cluster_resources()
    if total.get("GPU", 0) < profile.num_gpus:
        raise ConfigError(
            f"hardware profile '{profile.name}' measures on a GPU, but no Ray node has one; "
            "run on a machine with an NVIDIA GPU or join a GPU node to the cluster"
        )
    missing = {k: v for k, v in profile.ray_resources.items() if total.get(k, 0) < v}
    if missing:
        raise ConfigError(
            f"hardware profile '{profile.name}': no Ray node offers {missing}; start a node with "
            f"--resources='{{\"{next(iter(missing))}\": 1}}' or remove 'ray_resources' from the profile"
        )


class LatencyBench:
    """Measures candidates against the baseline, one at a time (see the module docstring)."""

    def measure(self, *args: Any, **kwargs: Any) -> Any:
        from tightfit.search._evaluate import measure

        return measure(*args, **kwargs)

    def runtime_missing(self, profile: HardwareProfile) -> str | None:
        from tightfit.evaluators.backends import runtime_missing

        return runtime_missing(profile)

    def reference(self, *args: Any, **kwargs: Any) -> Any:
        from tightfit.search._evaluate import measure_reference

        return measure_reference(*args, **kwargs)


def _import_stages() -> None:
    import tightfit.search._evaluate  # noqa: F401  (the import is the work: torch, onnx, ...)


def warm_up(n_workers: int) -> None:
    """Start the task workers now (one per CPU a trial may use) and wait until they are up.

    Ray starts worker processes lazily; their start-up would otherwise run beside the first
    latency measurements.
    """
    import ray

    task = ray.remote(num_cpus=1)(_import_stages)
    ray.get([task.remote() for _ in range(n_workers)])


def compress_function() -> Any:
    """Stage 1 as a Ray task: one CPU; system failures retried, never user errors."""
    import ray

    from tightfit.search._evaluate import compress_and_score

    return ray.remote(num_cpus=1, max_retries=2)(compress_and_score)


def latency_bench(profile: HardwareProfile) -> Any:
    """The profile's measurement actor (restarted if its process dies)."""
    import ray

    return (
        ray.remote(LatencyBench)
        .options(
            num_cpus=0,
            num_gpus=profile.num_gpus,
            resources=dict(profile.ray_resources) or None,
            max_restarts=2,
            max_task_retries=1,
        )
        .remote()
    )


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
