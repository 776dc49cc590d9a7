"""Searches submitted to a Ray cluster as Ray Jobs: ``tightfit submit``, ``status`` and ``logs``.

The job runs ``tightfit search`` on the cluster's head node with an explicit interpreter (a Ray
Job's entrypoint otherwise runs whatever ``python`` the head's PATH finds). The runtime
environment carries the project folder (the config, the profiles and the user's model code) as
the job's working directory, and the tightfit package itself. The study and the MLflow store live
where the driver runs: in ``remote_workdir`` on the head, or at the tracking server the config
names. A job's submission id is derived from the search name, ``tightfit-<name>``, then
``tightfit-<name>-2`` and so on, because Ray never reuses one; submitting the same search again
resumes its study.
"""

from __future__ import annotations

import logging
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tightfit.config import load_config
from tightfit.exceptions import ConfigError, TightfitError
from tightfit.keys import Tag

log = logging.getLogger(__name__)

PREFIX = "tightfit-"
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}
UPLOAD_EXCLUDES = [
    ".git",
    ".venv",
    "venv",
    "__pycache__",
    "runs",
    "engines",
    "mlruns",
    "mlartifacts",
    "*.onnx",
    "*.plan",
    "*.journal",
]
#: never uploaded unless named with --include: credentials, weights, databases
SENSITIVE_EXCLUDES = [
    # credentials
    ".env",
    ".env.*",
    "*.pem",
    "*.key",
    "*.p12",
    "*.pfx",
    ".netrc",
    "_netrc",
    ".pgpass",
    ".ssh",
    ".aws",
    ".docker",
    "id_rsa*",
    "id_ed25519*",
    # weights (large; the job's model callable should load them from shared storage)
    "*.pt",
    "*.pth",
    "*.ckpt",
    "*.safetensors",
    "*.gguf",
    "*.bin",
    "*.h5",
    # databases
    "*.db",
    "*.sqlite",
    "*.sqlite3",
]


class JobError(TightfitError):
    """The job server cannot be reached, or no job matches."""


@dataclass
class Submission:
    submission_id: str
    entrypoint: str
    working_dir: Path
    remote_workdir: str
    upload: Upload | None = None


def client(address: str | None) -> Any:
    """A Job client for ``address`` (the Ray dashboard, http://HEAD:8265)."""
    import os

    try:
        from ray.job_submission import JobSubmissionClient
    except ImportError as e:
        raise JobError(
            f"submitting to a cluster needs Ray's job client ({e}): pip install 'tightfit[cluster]'"
        ) from e

    address = address or os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS")
    if not address or address == "auto" or address.startswith("ray://"):
        raise JobError(
            "no job server address: give --address http://HEAD:8265 (the Ray dashboard of the "
            "cluster's head node) or set RAY_API_SERVER_ADDRESS"
        )
    try:
        return JobSubmissionClient(address)
    except Exception as e:  # connection refused, wrong port, no dashboard
        raise JobError(
            f"cannot reach the Ray job server at {address} ({_first_line(e)}); the head node must "
            "run the dashboard (ray[default], `ray start --head`), reached through an SSH tunnel "
            "(ssh -L 8265:127.0.0.1:8265 HEAD). Do not open it with --dashboard-host=0.0.0.0 "
            "on a network you do not trust: Ray's job API has no login and runs any command"
        ) from None


AGENT_WAIT_S = 180.0  # how long a submission waits for a just-started head's job agent
NO_AGENT = "No available agent"  # what Ray's job server answers while the head has none


def _first_line(exc: BaseException) -> str:
    """The first line of the job server's (often long) error."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def jobs_of(jobs: Any, search: str | None = None) -> list[Any]:
    """tightfit's jobs (of one search, if named), oldest first."""
    mine = [
        j
        for j in jobs.list_jobs()
        if j.submission_id
        and j.submission_id.startswith(PREFIX)
        and (search is None or (j.metadata or {}).get(Tag.SEARCH) == search)
    ]
    return sorted(mine, key=lambda j: j.start_time or 0)


def next_submission_id(jobs: Any, search: str) -> str:
    """``tightfit-<search>``, or the next free ``-<n>``; refuse while one is still running."""
    taken = jobs_of(jobs, search)
    for j in taken:
        if status_text(j.status) not in TERMINAL:
            raise JobError(
                f"search '{search}' is already running on the cluster as job {j.submission_id}; "
                f"follow it with `tightfit logs {search}` or stop it with `ray job stop "
                f"{j.submission_id}`"
            )
    ids = {j.submission_id for j in taken}
    base = f"{PREFIX}{search}"
    if base not in ids:
        return base
    n = 2
    while f"{base}-{n}" in ids:
        n += 1
    return f"{base}-{n}"


@dataclass
class Upload:
    """What ``submit`` sends as the job's working directory."""

    root: Path
    files: list[tuple[str, int]]  # (path relative to root, bytes), sorted
    withheld: list[str]  # files left out as credentials, weights or databases
    excludes: list[str]  # the patterns Ray applies (gitignore syntax; .gitignore too)

    @property
    def total_bytes(self) -> int:
        return sum(n for _, n in self.files)


def upload_plan(working_dir: Path, include: list[str] | None = None) -> Upload:
    """The files ``submit`` uploads from ``working_dir``, matched as Ray matches them: the
    excludes (gitignore syntax), plus each folder's ``.gitignore`` and ``.rayignore``.

    ``include`` patterns take files back from :data:`SENSITIVE_EXCLUDES` (e.g. a weights
    file the model callable needs on the cluster).
    """
    import pathspec

    withheld_patterns = [*SENSITIVE_EXCLUDES, *(f"!{p}" for p in include or [])]
    base = pathspec.PathSpec.from_lines("gitwildmatch", UPLOAD_EXCLUDES)
    sensitive = pathspec.PathSpec.from_lines("gitwildmatch", withheld_patterns)
    files: list[tuple[str, int]] = []
    withheld: list[str] = []

    def walk(folder: Path, ignores: list[tuple[Path, Any]]) -> None:
        for name in (".gitignore", ".rayignore"):
            if (folder / name).is_file():
                lines = (folder / name).read_text(errors="replace").splitlines()
                ignores = [*ignores, (folder, pathspec.PathSpec.from_lines("gitwildmatch", lines))]
        for path in sorted(folder.iterdir()):
            rel = path.relative_to(working_dir).as_posix() + ("/" if path.is_dir() else "")
            if base.match_file(rel) or any(
                spec.match_file(path.relative_to(where).as_posix() + ("/" if path.is_dir() else ""))
                for where, spec in ignores
            ):
                continue
            if sensitive.match_file(rel):
                withheld.append(rel)
                continue
            if path.is_dir() and not path.is_symlink():
                walk(path, ignores)
            elif path.is_file():
                files.append((rel, path.stat().st_size))

    walk(working_dir, [])
    return Upload(working_dir, files, withheld, [*UPLOAD_EXCLUDES, *withheld_patterns])


def shipped_env(upload: Upload, ship_tightfit: bool = True) -> dict[str, Any]:
    """The Ray ``runtime_env`` that carries ``upload``'s folder as the working directory (with
    its excludes) and, with ``ship_tightfit``, this tightfit package, to every worker."""
    env: dict[str, Any] = {"working_dir": str(upload.root), "excludes": upload.excludes}
    if ship_tightfit:
        env["py_modules"] = [str(Path(__file__).resolve().parents[1])]  # tightfit/
    return env


def submit(
    config_path: Path,
    address: str | None,
    python: str | None = None,
    working_dir: Path | None = None,
    remote_workdir: str | None = None,
    ship_tightfit: bool = True,
    env: dict[str, str] | None = None,
    n_trials: int | None = None,
    include: list[str] | None = None,
    dry_run: bool = False,
) -> Submission:
    """Submit the search of ``config_path`` to the cluster at ``address`` as a Ray Job.

    ``dry_run``: check everything and return what would be submitted (``Submission.upload``
    lists the files), without reaching the cluster.
    """
    config_path = config_path.resolve()
    config = load_config(config_path)  # a bad config fails here, not on the cluster
    working_dir = (working_dir or config_path.parent).resolve()
    try:
        relative = config_path.relative_to(working_dir)
    except ValueError:
        raise ConfigError(
            f"--working-dir {working_dir} must contain the config {config_path}: the job runs "
            "the config from the uploaded folder"
        ) from None
    if remote_workdir is None:
        # a relative workdir would land in the job's temporary copy of the project
        given = _workdir_in(config_path.read_text())
        absolute = given is not None and Path(given).is_absolute()
        remote_workdir = given if absolute else f"$HOME/tightfit-runs/{config.name}"
    assert remote_workdir is not None
    command = [python or sys.executable, "-m", "tightfit.cli", "search", str(relative)]
    entrypoint = " ".join(shlex.quote(c) for c in command)
    if remote_workdir.startswith("$HOME/"):  # expanded by the job's shell on the head
        entrypoint += ' --workdir "$HOME"/' + shlex.quote(remote_workdir.removeprefix("$HOME/"))
    else:
        entrypoint += f" --workdir {shlex.quote(remote_workdir)}"
    if n_trials is not None:
        entrypoint += f" --n-trials {int(n_trials)}"
    upload = upload_plan(working_dir, include)
    runtime_env = shipped_env(upload, ship_tightfit)
    runtime_env["env_vars"] = {"PYTHONUNBUFFERED": "1", **(env or {})}
    if dry_run:
        return Submission("(dry run)", entrypoint, working_dir, remote_workdir, upload)
    jobs = client(address)
    submission_id = next_submission_id(jobs, config.name)
    deadline = time.monotonic() + AGENT_WAIT_S
    waited = False
    while True:
        try:
            jobs.submit_job(
                entrypoint=entrypoint,
                runtime_env=runtime_env,
                submission_id=submission_id,
                metadata={Tag.SEARCH: config.name, Tag.CONFIG: str(relative)},
            )
            break
        except Exception as e:
            # a head node that just started has no job agent yet: Ray says to try again later
            if NO_AGENT in str(e) and time.monotonic() < deadline:
                if not waited:
                    log.info(
                        "the cluster's job agent is not up yet; retrying for up to %.0f s",
                        AGENT_WAIT_S,
                    )
                waited = True
                time.sleep(2.0)
                continue
            why = _first_line(e)
            if NO_AGENT in why:
                why += (
                    f" (for {AGENT_WAIT_S:.0f} s: the head's job agent did not come up. Another"
                    " Ray on the head machine may hold the agent's port, 52365 unless"
                    " `ray start --dashboard-agent-listen-port` says otherwise; its log is"
                    " dashboard_agent.log in the head's Ray session folder)"
                )
            raise JobError(f"the job server refused search '{config.name}': {why}") from None
    return Submission(submission_id, entrypoint, working_dir, remote_workdir, upload)


def _workdir_in(raw: str) -> str | None:
    import yaml

    data = yaml.safe_load(raw)
    value = data.get("workdir") if isinstance(data, dict) else None
    return str(value) if value else None


def find_job(jobs: Any, name: str) -> Any:
    """The job ``name`` names: a submission id, or a search's latest job."""
    every = jobs_of(jobs)
    for j in every:
        if j.submission_id == name:
            return j
    of_search = [j for j in every if (j.metadata or {}).get(Tag.SEARCH) == name]
    if not of_search:
        known = sorted({(j.metadata or {}).get(Tag.SEARCH, "?") for j in every})
        raise JobError(
            f"no tightfit job for '{name}' on this cluster"
            + (
                f"; its searches: {', '.join(known)}"
                if known
                else "; submit one with `tightfit submit`"
            )
        )
    return of_search[-1]


def follow(jobs: Any, submission_id: str, write: Any) -> str:
    """Stream a job's logs to ``write`` until it ends; return its final status."""
    import asyncio

    async def tail() -> None:
        async for chunk in jobs.tail_job_logs(submission_id):
            write(chunk)

    asyncio.run(tail())
    return status_text(jobs.get_job_status(submission_id))


def status_text(status: Any) -> str:
    """'SUCCEEDED', not 'JobStatus.SUCCEEDED'."""
    return str(getattr(status, "value", status))
