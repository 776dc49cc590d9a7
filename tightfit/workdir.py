"""The work directory of a search: its identity, layout and atomic writes.

Layout::

    <workdir>/search.json       the config that created it (name + fingerprint)
    <workdir>/optuna.journal    the Optuna journal (one study per hardware profile)
    <workdir>/mlflow.db         the MLflow store; artifacts in <workdir>/mlartifacts/
    <workdir>/cache/            what model callables cache (e.g. trained weights)
    <workdir>/summary/<profile>/ the front table and figures, also logged to MLflow
    <workdir>/tightfit.log      the full log, tracebacks included
    <workdir>/.lock             held by the search running there (who: PID, host, since)
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tightfit.config import SearchConfig, config_from_dict
from tightfit.exceptions import WorkdirError

IDENTITY = "search.json"
LOCK = ".lock"


def atomic_write(path: Path, data: bytes | str) -> Path:
    """Write ``path`` through a temporary file and a rename: readers never see half a file.

    A failed write (disk full, read-only folder) leaves the old file as it was and raises
    WorkdirError naming the path and the reason.
    """
    raw = data.encode() if isinstance(data, str) else data
    try:
        return _atomic_write(path, raw)
    except OSError as e:
        raise WorkdirError(
            f"cannot write '{path}': {e.strerror or e}; free some space or choose a writable folder"
        ) from e


def _atomic_write(path: Path, raw: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; the result is an ordinary file
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def prepare_workdir(config: SearchConfig) -> Path:
    """Create (or reopen) the work directory; refuse one that belongs to another search."""
    workdir = config.workdir_path
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "cache").mkdir(exist_ok=True)
        probe = workdir / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise WorkdirError(
            f"work directory '{workdir}' is not writable ({e.strerror}); set 'workdir' to a folder you can write"
        ) from None
    identity = workdir / IDENTITY
    if identity.exists():
        stored = _read_identity(identity)
        if stored.get("name") != config.name:
            raise WorkdirError(
                f"work directory '{workdir}' belongs to search '{stored.get('name')}', not '{config.name}'; "
                "choose another 'workdir' or remove that folder"
            )
        if stored.get("fingerprint") != config.fingerprint() and not _same_after_upgrade(
            stored, config
        ):
            raise WorkdirError(
                f"search '{config.name}' in '{workdir}' was started with a different model, data, space, "
                "objectives, constraints, profiles, sampler or seed; resuming would mix two searches: "
                "give the search a new 'name' (or 'workdir'), or remove that folder"
            )
    else:
        atomic_write(
            identity,
            json.dumps(
                {
                    "name": config.name,
                    "fingerprint": config.fingerprint(),
                    "config": config.model_dump(mode="json"),
                },
                indent=2,
            ),
        )
    return workdir


def _same_after_upgrade(stored: dict, config: SearchConfig) -> bool:
    """Whether the stored config, read by this version, is ``config``: a newer tightfit adds
    fields with defaults (so the stored fingerprint, hashed with the old fields, differs), and
    resuming a search across an upgrade must not be refused for that."""
    try:
        then = config_from_dict(stored["config"])
    except Exception:  # noqa: BLE001 - unreadable now: the fingerprints decide
        return False
    return then.fingerprint() == config.fingerprint()


def load_workdir_config(workdir: Path) -> SearchConfig:
    """The config a work directory was created with (for export, pareto and ui)."""
    identity = Path(workdir) / IDENTITY
    if not identity.exists():
        raise WorkdirError(
            f"'{workdir}' is not a tightfit work directory (no {IDENTITY}); run 'tightfit search' first"
        )
    stored = _read_identity(identity)
    if not isinstance(stored.get("config"), dict):
        raise WorkdirError(f"'{identity}' has no 'config' mapping; {_CORRUPT_FIX}")
    return config_from_dict(stored["config"], source=str(identity))


_CORRUPT_FIX = (
    "restore it from a backup, or rerun 'tightfit search' with the search's config file "
    "(it rewrites search.json when the file is gone)"
)


def _read_identity(identity: Path) -> dict[str, Any]:
    """``search.json``, or a one-line WorkdirError when it is unreadable or corrupt."""
    try:
        stored = json.loads(identity.read_text())
    except OSError as e:
        raise WorkdirError(f"cannot read '{identity}': {e.strerror}") from None
    except ValueError as e:
        raise WorkdirError(f"'{identity}' is corrupt (not JSON: {e}); {_CORRUPT_FIX}") from None
    if not isinstance(stored, dict):
        raise WorkdirError(f"'{identity}' is corrupt (not a JSON object); {_CORRUPT_FIX}")
    return stored


@contextlib.contextmanager
def workdir_lock(workdir: Path) -> Iterator[None]:
    """Hold ``<workdir>/.lock`` while a search runs there; a second search gets WorkdirError.

    An advisory ``flock``: the kernel releases it when the holder exits, however it exits (a
    crash or ``kill -9`` leaves no stale lock to clean up). Where ``fcntl`` does not exist
    (Windows) nothing is locked.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    path = Path(workdir) / LOCK
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise WorkdirError(_held_by(path, workdir)) from None
        os.ftruncate(fd, 0)
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": " ".join(sys.argv),
        }
        os.write(fd, json.dumps(holder).encode())
        yield
    finally:
        os.close(fd)  # releases the lock


def _held_by(path: Path, workdir: Path) -> str:
    try:
        holder = json.loads(path.read_text())
        who = f"PID {holder['pid']} on {holder['host']}, since {holder['since']}"
        stop = f" (Ctrl-C it, or kill -INT {holder['pid']})"
    except (OSError, ValueError, KeyError):
        who, stop = "another process", ""
    return (
        f"work directory '{workdir}' is in use by another tightfit search ({who}); wait for it "
        f"to finish or stop it{stop}, then rerun to resume"
    )
