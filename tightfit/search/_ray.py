"""Ray execution: a local Ray by default; compression as tasks, measurement in actors.

Measurements run in long-lived ``LatencyBench`` actors, one per measuring device, placed by the
profile's Ray resources (one slot per device, so Ray never puts two measurements on a device)
and node labels. An actor, not a task: a task takes a pooled worker, and Ray then starts a
replacement worker process whose start-up (imports) runs beside the measurement and slowed it
by up to 2x in our runs. The actors are started once and stay warm. On one machine (a profile
with no resource or label) a measurement shares the cores with compression, so the driver
dispatches no compression task while one is queued or running.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tightfit.config import SearchConfig
from tightfit.exceptions import ConfigError
from tightfit.hardware_profiles import HardwareProfile

if TYPE_CHECKING:
    from tightfit.workspace import MeasurementReference

log = logging.getLogger(__name__)

OBJECT_STORE_BYTES = 512 * 1024**2
SHIP_LIMIT_BYTES = 250 * 10**6  # Ray refuses a working_dir package past 500 MiB; stay well below


def start_ray(config: SearchConfig) -> bool:
    """Start (or connect to) Ray; return True if this call started it."""
    import ray

    if ray.is_initialized():
        return False
    logging.getLogger("ray").setLevel(logging.ERROR)
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ["RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO"] = "0"
    # RAY_ADDRESS is set inside a Ray Job (tightfit submit): join the cluster the job runs on,
    # whose runtime_env (the uploaded folder, tightfit) the job's workers already have
    in_job = bool(os.environ.get("RAY_ADDRESS"))
    address = config.ray.address or os.environ.get("RAY_ADDRESS")
    if address:
        env = cluster_runtime_env(config) if config.ray.address and not in_job else None
        ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False, runtime_env=env)
        return True
    # Local workers inherit this environment: let them import user modules from the cwd.
    paths = [str(Path.cwd()), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    resources: dict[str, float] = {}
    for profile in config.hardware_profiles():
        resources.update(profile.ray_resources)
    # "local": a Ray of our own, even when a cluster already runs on this machine (without it,
    # ray.init joins that cluster and refuses num_cpus)
    ray.init(
        address="local",
        num_cpus=config.ray.num_cpus or os.cpu_count() or 1,
        resources=resources or None,
        include_dashboard=False,
        object_store_memory=OBJECT_STORE_BYTES,
        logging_level=logging.ERROR,
        log_to_driver=False,
        configure_logging=True,
    )
    return True


def cluster_runtime_env(config: SearchConfig) -> dict[str, Any] | None:
    """What a driver outside the cluster sends its workers: with ``ray.ship``, the current
    folder (the user's modules; the files ``submit`` would upload, credentials, weights and
    work directories left out) and this tightfit package; then ``ray.runtime_env`` over it.

    Without it a remote worker imports neither tightfit (unless installed there) nor the
    model and data modules: Ray adds the driver's current directory to workers' paths,
    which exists on the driver's machine only.
    """
    from tightfit.search.jobs import shipped_env, upload_plan

    env: dict[str, Any] = {}
    if config.ray.ship:
        upload = upload_plan(Path.cwd())
        if upload.total_bytes > SHIP_LIMIT_BYTES:
            raise ConfigError(
                f"ray.ship: the current folder {upload.root} holds {upload.total_bytes / 1e6:.0f} "
                f"MB to send to the cluster (at most {SHIP_LIMIT_BYTES / 1e6:.0f}); run from "
                "your project's folder, list big files in a .rayignore, or set ray.ship: false "
                "where the workers already have your code"
            )
        env = shipped_env(upload)
        log.info(
            "sending %d files (%.1f MB) from %s and tightfit to the cluster's workers%s",
            len(upload.files),
            upload.total_bytes / 1e6,
            upload.root,
            f"; withheld: {', '.join(upload.withheld[:5])}" if upload.withheld else "",
        )
    env.update(config.ray.runtime_env)
    return env or None


def _demand(profile: HardwareProfile) -> dict[str, float]:
    """What one measurement asks of a node: its custom resources and GPUs."""
    return {**profile.ray_resources, **({"GPU": profile.num_gpus} if profile.num_gpus else {})}


def measurement_slots(profile: HardwareProfile, nodes: list[dict[str, Any]] | None = None) -> int:
    """How many measurements of ``profile`` the cluster can run at once (devices that fit it).

    Counts, over the alive nodes whose labels match the profile's ``ray_labels``, how many times
    each node's total resources hold one measurement's demand. A profile with no demand (a CPU
    profile on one machine) measures on the driver's machine: one slot. Labels without a
    resource give one slot too: nothing would stop Ray from putting two measurements on one
    node, so the profile's measurements run one at a time.
    """
    import ray

    demand = _demand(profile)
    if not demand and not profile.ray_labels:
        return 1
    slots = 0
    for node in ray.nodes() if nodes is None else nodes:
        labels = node.get("Labels") or {}
        if not node.get("Alive") or any(labels.get(k) != v for k, v in profile.ray_labels.items()):
            continue
        have = node.get("Resources") or {}
        slots += min((int(have.get(k, 0) // v) for k, v in demand.items()), default=1)
    return slots if demand else min(slots, 1)


def check_feasible(profile: HardwareProfile, nodes: list[dict[str, Any]] | None = None) -> int:
    """Stop before the first trial if no node can measure ``profile`` (Ray would wait forever).

    Returns the number of measurement slots (devices) the cluster offers the profile.
    """
    slots = measurement_slots(profile, nodes)
    if slots:
        return slots
    name = profile.name
    if profile.ray_labels:
        wanted = ",".join(f"{k}={v}" for k, v in profile.ray_labels.items())
        raise ConfigError(
            f"hardware profile '{name}': no alive Ray node has the labels {{{wanted}}} together "
            f"with {_demand(profile) or 'a CPU'}; start one with `ray start --labels={wanted}"
            + "".join(
                f" --resources='{{\"{k}\": {v:g}}}'" for k, v in profile.ray_resources.items()
            )
            + "` or remove 'ray_labels' from the profile"
        )
    if profile.num_gpus and not profile.ray_resources:
        raise ConfigError(
            f"hardware profile '{name}' measures on a GPU, but no Ray node has one; "
            "run on a machine with an NVIDIA GPU or join a GPU node to the cluster"
        )
    key, amount = next(iter(profile.ray_resources.items()))
    raise ConfigError(
        f"hardware profile '{name}': no Ray node offers {_demand(profile)}; start a node with "
        f"--resources='{{\"{key}\": {amount:g}}}'"
        + (" and a GPU" if profile.num_gpus else "")
        + " or remove 'ray_resources' from the profile"
    )


class LatencyBench:
    """Measures candidates against the baseline: one at a time during the search, together at
    its end (see the module docstring)."""

    def measure(
        self, profile: HardwareProfile, onnx_bytes: bytes, reference: MeasurementReference
    ) -> Any:
        """A candidate's latency, with the node and the time window it was measured in."""
        return self.measure_many(profile, [onnx_bytes], reference)[0]

    def measure_many(
        self, profile: HardwareProfile, onnx: list[bytes], reference: MeasurementReference
    ) -> Any:
        """Several candidates' latency, measured together (``measure_jointly``), each with the
        node and the time window they were measured in."""
        import time

        import ray

        from tightfit.workspace import measure_many

        start = time.time()
        results = measure_many(profile, onnx, reference)
        stamp = {"node_id": ray.get_runtime_context().get_node_id(), "window": (start, time.time())}
        return [r.model_copy(update=stamp) for r in results]

    def runtime_missing(self, profile: HardwareProfile) -> str | None:
        from tightfit.evaluators.runtimes import runtime_missing

        return runtime_missing(profile)

    def reference(self, profile: HardwareProfile, reference: MeasurementReference) -> Any:
        from tightfit.workspace import measure_reference

        return measure_reference(profile, reference)


def _import_stages() -> None:
    import tightfit.workspace  # noqa: F401  (the import is the work: torch, onnx, ...)


def warm_up(n_workers: int) -> None:
    """Start the task workers now (one per CPU a trial may use) and wait until they are up.

    Ray starts worker processes lazily; their start-up would otherwise run beside the first
    latency measurements.
    """
    import ray

    task = ray.remote(num_cpus=1)(_import_stages)
    ray.get([task.remote() for _ in range(n_workers)])


def _compress_on_node(setup: Any, candidate: Any, subset_only: bool = False) -> Any:
    import time

    import ray

    from tightfit.workspace import compress_and_score

    start = time.time()
    one = compress_and_score(setup, candidate, subset_only)
    node = ray.get_runtime_context().get_node_id()
    return one.model_copy(update={"node_id": node, "started_at": start})


def _rebuild_on_node(setup: Any, candidate: Any) -> bytes:
    from tightfit.workspace import workspace

    return workspace(setup).rebuild(candidate)[0]


def cpu_task(function: Any) -> Any:
    """``function`` as a Ray task: one CPU, anywhere; system failures (a node died) retried
    elsewhere by Ray, never user errors. Stage 1 and the end-of-search rebuilds."""
    import ray

    return ray.remote(num_cpus=1, max_retries=2)(function)


def latency_bench(profile: HardwareProfile) -> Any:
    """A measurement actor for ``profile``, holding one device slot while it lives.

    Not restarted by Ray: if its node dies, the driver moves the measurement to another actor
    and starts a replacement, which Ray places once a device is free again.
    """
    import ray

    options: dict[str, Any] = {
        "num_cpus": 0,
        "num_gpus": profile.num_gpus,
        "resources": dict(profile.ray_resources) or None,
        "max_restarts": 0,
    }
    if profile.ray_labels:
        options["label_selector"] = dict(profile.ray_labels)
    return ray.remote(LatencyBench).options(**options).remote()


def is_system_failure(exc: BaseException) -> bool:
    """The node or the worker process died (retry elsewhere), as opposed to the work failing."""
    import ray.exceptions

    return isinstance(
        exc,
        (
            ray.exceptions.RayActorError,
            ray.exceptions.WorkerCrashedError,
            ray.exceptions.NodeDiedError,
            ray.exceptions.ObjectLostError,
            ray.exceptions.OwnerDiedError,
        ),
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


class RayExecutor:
    """The driver's :class:`~tightfit.search._executor.Executor` on Ray: compression as tasks
    (one CPU, anywhere), measurements in ``LatencyBench`` actors."""

    def __init__(self) -> None:
        self._compress = cpu_task(_compress_on_node)
        self._rebuild = cpu_task(_rebuild_on_node)

    def compress(self, setup: Any, candidate: Any, subset_only: bool = False) -> Any:
        return self._compress.remote(setup, candidate, subset_only)

    def rebuild(self, setup: Any, candidate: Any) -> Any:
        return self._rebuild.remote(setup, candidate)

    def new_bench(self, profile: HardwareProfile) -> Any:
        return latency_bench(profile)

    def bench_ready(self, bench: Any, profile: HardwareProfile) -> Any:
        return bench.runtime_missing.remote(profile)

    def measure(
        self, bench: Any, profile: HardwareProfile, onnx: bytes, ref: MeasurementReference
    ) -> Any:
        return bench.measure.remote(profile, onnx, ref)

    def measure_many(
        self, bench: Any, profile: HardwareProfile, onnx: Any, ref: MeasurementReference
    ) -> Any:
        return bench.measure_many.remote(profile, list(onnx), ref)

    def measure_reference(
        self, bench: Any, profile: HardwareProfile, ref: MeasurementReference
    ) -> Any:
        return bench.reference.remote(profile, ref)

    def wait(self, refs: list[Any], timeout: float) -> list[Any]:
        import ray

        return ray.wait(refs, num_returns=1, timeout=timeout)[0] if refs else []

    def get(self, ref: Any) -> Any:
        import ray

        return ray.get(ref)

    def cancel(self, ref: Any) -> None:
        import ray

        ray.cancel(ref, force=True)

    def kill(self, bench: Any) -> None:
        import ray

        try:
            ray.kill(bench, no_restart=True)
        except Exception:  # already dead with its node
            pass

    def check(self, profile: HardwareProfile) -> None:
        check_feasible(profile)

    def slots(self, profile: HardwareProfile) -> int:
        return measurement_slots(profile)

    def warm_up(self, n_workers: int) -> None:
        warm_up(n_workers)

    def is_system_failure(self, exc: BaseException) -> bool:
        return is_system_failure(exc)

    def error_text(self, exc: BaseException) -> str:
        return error_text(exc)


def measure_engines(
    config: SearchConfig,
    profile: HardwareProfile,
    onnx: list[bytes],
    reference: MeasurementReference,
) -> tuple[float, list[Any]]:
    """The baseline's reference latency now, and ``onnx`` measured together against it, on a
    bench as the search measured: on a node with the profile's hardware (the search's Ray
    cluster when ``ray.address`` names one, else a local Ray), in a Ray worker process. The
    same candidate measured in the calling process instead read 2-4% faster against the
    baseline than in the search's actor on the 2-core Xeon VM (four exports against two actor
    measurements), enough to leave the logged interval. For ``tightfit export``."""
    import ray

    started = start_ray(config)
    try:
        check_feasible(profile)
        bench = latency_bench(profile)
        ref_ms = float(ray.get(bench.reference.remote(profile, reference)).baseline_median_ms)
        reference = reference.model_copy(update={"reference_ms": ref_ms})
        return ref_ms, list(ray.get(bench.measure_many.remote(profile, onnx, reference)))
    finally:
        if started:
            ray.shutdown()
