"""MLflow logging: one experiment per search, one run per trial, one summary run per profile.

The driver is the only writer (SQLite allows one): it creates a trial's run when the trial is
dispatched, and logs everything in one ``log_batch`` when the result comes back. Runs are found
again by their tags (``tightfit.profile`` + ``tightfit.trial``), so a resumed search reuses them
instead of duplicating them.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tightfit.exceptions import WorkdirError
from tightfit.keys import Status, Tag, TrialAttr
from tightfit.objectives import quality_of
from tightfit.runs import _mlflow_view as view

if TYPE_CHECKING:
    from tightfit.search import Told

MAX_PARAMS_PER_BATCH = 100
MLFLOW_PARENT_RUN_ID = "mlflow.parentRunId"  # mlflow.utils.mlflow_tags.MLFLOW_PARENT_RUN_ID


def tracking_uri(workdir: Path) -> str:
    return f"sqlite:///{workdir / 'mlflow.db'}"


SERVER_SCHEMES = ("http", "https", "databricks", "databricks-uc", "uc")


def local_artifacts(uri: str, workdir: Path) -> str | None:
    """Where a new experiment's artifacts go: for a tracking server, wherever the server says
    (None: its ``--default-artifact-root``, or its proxied ``mlflow-artifacts:/`` store); for a
    store this process writes itself (SQLite, a database, a folder), ``<workdir>/mlartifacts``.
    Set to the driver's disk with a server, the team's MLflow UI could not show a front, an
    engine or a table."""
    from urllib.parse import urlparse

    if (urlparse(uri).scheme or uri) in SERVER_SCHEMES:  # "databricks" alone is a server too
        return None
    return (workdir / "mlartifacts").resolve().as_uri()


def _quiet() -> None:
    import os

    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    for name in ("mlflow", "alembic", "sqlalchemy"):
        logging.getLogger(name).setLevel(logging.WARNING)


LOCKED_WAIT_S = 60.0  # a locked SQLite store is retried this long before giving up


class GuardedClient:
    """An ``MlflowClient`` whose store errors are one-line WorkdirErrors that say what to do.

    A locked SQLite database (an ``mlflow ui`` or another reader holding it) is retried with
    backoff for up to ``LOCKED_WAIT_S``; a corrupt database, one from another MLflow version,
    or a tracking server that cannot be reached is a WorkdirError naming the store and the fix.
    MLflow's own answers about runs and models (a name that exists already, a run that does
    not) pass through as ``MlflowException`` for the caller to handle.
    """

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self._client = self._call(_make_client, uri)

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr
        return lambda *args, **kwargs: self._call(attr, *args, **kwargs)

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        deadline = time.monotonic() + LOCKED_WAIT_S
        delay = 0.05
        while True:
            try:
                return fn(*args, **kwargs)
            except Exception as e:
                kind = store_problem(e)
                if kind is None:
                    raise
                if kind == "locked" and time.monotonic() < deadline:
                    time.sleep(delay)
                    delay = min(2 * delay, 2.0)
                    continue
                raise WorkdirError(_store_message(self.uri, kind, e)) from e


def _make_client(uri: str) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)  # opens (and checks) the store: errors surface here


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def store_problem(exc: BaseException) -> str | None:
    """What is wrong with the store, from an exception of any layer (None: not the store's)."""
    text = " ".join(f"{type(e).__name__}: {e}" for e in _chain(exc)).lower()
    if "database is locked" in text or "database table is locked" in text:
        return "locked"
    if "file is not a database" in text or "malformed" in text or "not a database" in text:
        return "corrupt"
    if "can't locate revision" in text or "out-of-date database schema" in text:
        return "version"
    if "no such table" in text or "no such column" in text:
        return "version"
    if (
        any(
            type(e).__name__ in ("ConnectionError", "MaxRetryError", "NewConnectionError")
            for e in _chain(exc)
        )
        or "max retries exceeded" in text
    ):
        return "unreachable"
    if any(type(e).__module__.startswith(("sqlalchemy", "sqlite3")) for e in _chain(exc)):
        return "database"
    return None


def _store_message(uri: str, kind: str, exc: BaseException) -> str:
    first = next((str(e).strip().splitlines()[0] for e in _chain(exc) if str(e).strip()), "")
    where = uri.removeprefix("sqlite:///")
    fixes = {
        "locked": f"it stayed locked for {LOCKED_WAIT_S:g} s: another process holds it (an "
        "'mlflow ui' or another search?); stop that process and rerun to resume",
        "corrupt": f"it is corrupt ({first}); move {where} aside and rerun to resume: the "
        "Optuna journal keeps every trial, and the rerun writes their runs again",
        "version": f"it was written by another MLflow version ({first}); use that version, or "
        f"back it up and upgrade it with 'mlflow db upgrade {uri}'",
        "unreachable": f"the tracking server cannot be reached ({first}); check that it runs "
        "and that mlflow.tracking_uri is right, then rerun to resume",
        "database": f"{first}; rerun to resume once the store is reachable",
    }
    return f"MLflow store {uri}: {fixes[kind]}"


class Tracker:
    """Writes a search's runs to the MLflow store in its work directory (or a given URI)."""

    def __init__(
        self,
        workdir: Path,
        search: str,
        uri: str | None = None,
        objectives: list[str] | None = None,
    ) -> None:
        _quiet()
        self.workdir = workdir
        self.search = search
        self.uri = uri or tracking_uri(workdir)
        self.client: Any = GuardedClient(self.uri)
        experiment = self.client.get_experiment_by_name(search)
        if experiment is None:
            self.experiment_id = self.client.create_experiment(
                search,
                artifact_location=local_artifacts(self.uri, workdir),
                tags={Tag.SEARCH: search},
            )
        else:
            self.experiment_id = experiment.experiment_id
        self._runs: dict[tuple[str, int], str] = {}
        self._pareto: dict[str, bool] = {}
        self._feasible: dict[str, bool] = {}
        self._summary: dict[str, str] = {}  # profile -> summary run id
        self._load_existing()
        if objectives:
            self.client.set_experiment_tag(self.experiment_id, *view.view_tag(objectives))

    def _load_existing(self) -> None:
        for run in self._search(f"tags.`{Tag.KIND}` = 'trial'"):
            key = (run.data.tags[Tag.PROFILE], int(run.data.tags[Tag.TRIAL]))
            self._runs[key] = run.info.run_id
            self._pareto[run.info.run_id] = run.data.tags.get(Tag.PARETO) == "true"
            self._feasible[run.info.run_id] = run.data.tags.get(Tag.FEASIBLE) == "true"

    def _search(self, query: str) -> list[Any]:
        runs: list[Any] = []
        token = None
        while True:
            page = self.client.search_runs(
                [self.experiment_id], filter_string=query, max_results=1000, page_token=token
            )
            runs.extend(page)
            token = page.token
            if not token:
                return runs

    def ui_url(self, base: str = "http://127.0.0.1:5000") -> str:
        """The runs page of this search, opened on the Pareto chart view."""
        if self.uri.startswith(("http://", "https://")):
            base = self.uri.rstrip("/")
        return view.view_url(base, self.experiment_id)

    def run_id(self, profile: str, trial: int) -> str | None:
        return self._runs.get((profile, trial))

    def start_trial(self, profile: str, trial: int, params: dict[str, Any]) -> str:
        """The trial's run (created RUNNING, or the existing one on resume)."""
        existing = self._runs.get((profile, trial))
        if existing is not None:
            return existing
        from mlflow.entities import Param

        run = self.client.create_run(
            self.experiment_id,
            run_name=f"{profile}-trial-{trial:04d}",
            tags={
                Tag.SEARCH: self.search,
                Tag.PROFILE: profile,
                Tag.TRIAL: str(trial),
                Tag.KIND: "trial",
                Tag.STATUS: "running",
                Tag.PARETO: "false",
                # nested under the profile's summary run, as Optuna's MLflowCallback and Ray
                # Tune nest trials: the UI folds a search's trials under its front
                MLFLOW_PARENT_RUN_ID: self.summary_run(profile),
            },
        )
        run_id = run.info.run_id
        items = [Param(k, str(v)) for k, v in sorted(params.items())]
        for i in range(0, len(items), MAX_PARAMS_PER_BATCH):
            self.client.log_batch(run_id, params=items[i : i + MAX_PARAMS_PER_BATCH])
        self._runs[(profile, trial)] = run_id
        self._pareto[run_id] = False
        return run_id

    def finish_trial(
        self,
        run_id: str,
        metrics: dict[str, float],
        status: str,
        error: str | None = None,
        feasible: bool | None = None,
        artifacts: dict[str, Any] | None = None,
        tags: dict[str, str] | None = None,
    ) -> None:
        """Log a finished trial: metrics, status, extra tags and JSON artifacts, in one batch."""
        from mlflow.entities import Metric, RunTag

        now = int(time.time() * 1000)
        run_tags = [RunTag(Tag.STATUS, status), *(RunTag(k, v) for k, v in (tags or {}).items())]
        if error:
            run_tags.append(RunTag(Tag.ERROR, error[:5000]))
        if feasible is not None:
            run_tags.append(RunTag(Tag.FEASIBLE, str(feasible).lower()))
        self._feasible[run_id] = bool(feasible)
        color = view.COLORS["feasible" if feasible else "infeasible"]
        run_tags.append(RunTag(view.COLOR_TAG, color))
        self.client.log_batch(
            run_id,
            metrics=[Metric(k, float(v), now, 0) for k, v in sorted(metrics.items())],
            tags=run_tags,
        )
        for name, content in (artifacts or {}).items():
            self.client.log_dict(run_id, content, name)
        finished = status in Status.FINISHED
        self.client.set_terminated(run_id, "FINISHED" if finished else "FAILED")

    def record_trial(self, run_id: str, told: Told) -> None:
        """A told trial's run, finished as the driver told Optuna (``search.Told``)."""
        self.finish_trial(
            run_id,
            told.metrics,
            status=told.status,
            error=told.error,
            feasible=told.feasible,
            artifacts=told.artifacts,
            tags=told.tags,
        )

    def set_pareto(self, profile: str, front_trials: set[int]) -> None:
        """Keep the ``tightfit.pareto`` tag current: write only the runs whose flag changed."""
        for (p, trial), run_id in self._runs.items():
            if p != profile:
                continue
            on_front = trial in front_trials
            if self._pareto.get(run_id) != on_front:
                self.client.set_tag(run_id, Tag.PARETO, str(on_front).lower())
                color = (
                    "pareto"
                    if on_front
                    else "feasible"
                    if self._feasible.get(run_id)
                    else "infeasible"
                )
                self.client.set_tag(run_id, view.COLOR_TAG, view.COLORS[color])
                self._pareto[run_id] = on_front

    def summary_run(self, profile: str) -> str:
        """The profile's summary run (its front, figures and progress), created once."""
        if profile in self._summary:
            return self._summary[profile]
        found = self._search(
            f"tags.`{Tag.KIND}` = 'summary' and tags.`{Tag.PROFILE}` = '{profile}'"
        )
        if found:
            self._summary[profile] = found[0].info.run_id
        else:
            run = self.client.create_run(
                self.experiment_id,
                run_name=f"{profile}-pareto-front",
                tags={Tag.SEARCH: self.search, Tag.PROFILE: profile, Tag.KIND: "summary"},
            )
            self._summary[profile] = run.info.run_id
        return self._summary[profile]

    def log_progress(self, profile: str, metrics: dict[str, float], step: int) -> None:
        """Metrics of the search so far (e.g. the front's hypervolume) at ``step`` trials, on
        the profile's summary run: MLflow charts them over trials."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(
            self.summary_run(profile),
            metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()],
        )

    def log_files(self, profile: str, files: list[Path]) -> None:
        """Files (tables, figures) on the profile's summary run."""
        run_id = self.summary_run(profile)
        for f in files:
            self.client.log_artifact(run_id, str(f))

    def stop_summary(self, profile: str) -> None:
        """An interrupted search: end its summary run KILLED (a rerun finishes it)."""
        run_id = self._summary.get(profile)
        if run_id is not None and self.client.get_run(run_id).info.status == "RUNNING":
            self.client.set_terminated(run_id, "KILLED")

    def log_summary(
        self,
        profile: str,
        metrics: dict[str, float],
        files: list[Path],
        params: dict[str, Any] | None = None,
        step: int = 0,
    ) -> str:
        """The profile's final metrics (at ``step``: the trials done), files and params."""
        from mlflow.entities import Metric, Param

        run_id = self.summary_run(profile)
        now = int(time.time() * 1000)
        existing = self.client.get_run(run_id).data.params
        new_params = [Param(k, str(v)) for k, v in (params or {}).items() if k not in existing]
        self.client.log_batch(
            run_id,
            metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()],
            params=new_params[:MAX_PARAMS_PER_BATCH],
        )
        for f in files:
            self.client.log_artifact(run_id, str(f))
        self.client.set_terminated(run_id, "FINISHED")
        return run_id

    def reconcile(self, profile: str, trials: list[Any], objectives: list[str]) -> int:
        """After a crash, give every finished trial of ``profile`` exactly one finished run.

        A driver killed between telling Optuna and writing MLflow leaves a run RUNNING (or, killed
        right after asking, no run at all). The study is the source of truth: such runs are
        written from the trial (values, status, error) and tagged ``tightfit.reconciled``.
        Returns how many runs were written.
        """
        from optuna.trial import TrialState

        running = {
            run.info.run_id
            for run in self._search(
                f"tags.`{Tag.KIND}` = 'trial' and tags.`{Tag.PROFILE}` = '{profile}' "
                "and attributes.status = 'RUNNING'"
            )
        }
        fixed = 0
        loss = quality_of(objectives).loss_name
        for t in trials:
            if not t.state.is_finished():
                continue
            run_id = self._runs.get((profile, t.number))
            if run_id is not None and run_id not in running:
                continue
            if run_id is None:
                run_id = self.start_trial(profile, t.number, t.params)
            tags = {Tag.RECONCILED: "true"}
            if t.state == TrialState.COMPLETE:
                metrics = dict(zip(objectives, t.values, strict=True))
                for key in ("speedup", loss):
                    if key in t.user_attrs:
                        metrics[key] = t.user_attrs[key]
                self.finish_trial(run_id, metrics, "complete", tags=tags)
            elif t.state == TrialState.PRUNED:  # not measured: pre-screened, stopped, a repeat
                stage = t.user_attrs.get(TrialAttr.STAGE, Status.PRESCREENED)
                status = stage if stage in (Status.PRESCREENED, Status.REPEAT) else Status.STOPPED
                self.finish_trial(run_id, {}, status, tags={**tags, Tag.STAGE: stage})
            elif t.user_attrs.get(TrialAttr.INTERRUPTED):
                self.mark_interrupted(profile, t.number, "driver stopped; trial enqueued again")
            else:
                error = str(
                    t.user_attrs.get(TrialAttr.ERROR, "failed; the driver stopped before logging")
                )
                self.finish_trial(run_id, {}, "failed", error=error, tags=tags)
            fixed += 1
        return fixed

    def mark_interrupted(self, profile: str, trial: int, reason: str) -> None:
        run_id = self._runs.get((profile, trial))
        if run_id is None:
            return
        run = self.client.get_run(run_id)
        if run.info.status == "RUNNING":
            self.client.set_tag(run_id, Tag.STATUS, "interrupted")
            self.client.set_tag(run_id, Tag.ERROR, reason)
            self.client.set_terminated(run_id, "KILLED")
