"""What the driver asks of the machines it runs on, and what it tells the record keeper.

The driver (``_driver``, ``_scheduler``) holds no Ray call and no MLflow call of its own: it
goes through an :class:`Executor` (``_ray.RayExecutor`` in a search; a fake in the scheduler's
unit tests) and a :class:`Recorder` (``runs.Tracker``, MLflow). A *ref* is a handle to work in
flight; a *bench* is a measurement actor holding one device.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from tightfit.hardware_profiles import HardwareProfile
    from tightfit.search._tell import Told
    from tightfit.spaces import Candidate
    from tightfit.workspace import MeasurementReference, Setup

Ref = Any
Bench = Any


class Executor(Protocol):
    def compress(self, setup: Setup, candidate: Candidate, subset_only: bool = False) -> Ref:
        """Stage 1 somewhere (``workspace.compress_and_score``); its result is a StageOne."""

    def rebuild(self, setup: Setup, candidate: Candidate) -> Ref:
        """``candidate`` compressed and exported again somewhere (``Workspace.rebuild``); its
        result is the ONNX bytes."""

    def new_bench(self, profile: HardwareProfile) -> Bench:
        """Start a measurement actor for ``profile``; it holds one device slot while it lives."""

    def bench_ready(self, bench: Bench, profile: HardwareProfile) -> Ref:
        """A readiness probe: its result is None, or why the bench cannot measure."""

    def measure(
        self, bench: Bench, profile: HardwareProfile, onnx: bytes, ref: MeasurementReference
    ) -> Ref:
        """Stage 2 on ``bench``; its result is a LatencyResult."""

    def measure_many(
        self,
        bench: Bench,
        profile: HardwareProfile,
        onnx: Sequence[bytes],
        ref: MeasurementReference,
    ) -> Ref:
        """Several candidates measured together; the result is a list of LatencyResult."""

    def measure_reference(
        self, bench: Bench, profile: HardwareProfile, ref: MeasurementReference
    ) -> Ref:
        """The baseline's reference latency (``workspace.measure_reference``)."""

    def wait(self, refs: list[Ref], timeout: float) -> list[Ref]:
        """Those of ``refs`` that are done (at least one, unless ``timeout`` passed)."""

    def get(self, ref: Ref) -> Any:
        """The result of done work (raises its error)."""

    def cancel(self, ref: Ref) -> None:
        """Stop compression work (measurements cannot be cancelled: kill their bench)."""

    def kill(self, bench: Bench) -> None:
        """Stop a bench and free its device (no error if it is already gone)."""

    def check(self, profile: HardwareProfile) -> None:
        """ConfigError, before the first trial, if no machine can measure ``profile``."""

    def slots(self, profile: HardwareProfile) -> int:
        """How many measurements of ``profile`` can run at once (its devices)."""

    def warm_up(self, n_workers: int) -> None:
        """Start the compression workers now, before the first measurement."""

    def is_system_failure(self, exc: BaseException) -> bool:
        """The node or process died (move the work), as opposed to the work failing."""

    def error_text(self, exc: BaseException) -> str:
        """The user-level reason inside an error, one line."""


class Recorder(Protocol):
    """The record keeper of a search (``runs.Tracker``: one MLflow run per trial, one summary
    run per profile). The driver is its only writer."""

    def start_trial(self, profile: str, trial: int, params: dict[str, Any]) -> str: ...

    def record_trial(self, run_id: str, told: Told) -> None:
        """Finish the trial's run as ``told`` says (status, metrics, tags, artifacts)."""

    def set_pareto(self, profile: str, front_trials: set[int]) -> None: ...

    def log_progress(self, profile: str, metrics: dict[str, float], step: int) -> None: ...

    def log_files(self, profile: str, files: list[Path]) -> None: ...

    def mark_interrupted(self, profile: str, trial: int, reason: str) -> None: ...

    def reconcile(self, profile: str, trials: list[Any], objectives: list[str]) -> int: ...

    def stop_summary(self, profile: str) -> None: ...

    def ui_url(self) -> str: ...
