"""The work directory of a search: its identity, layout and atomic writes.

Layout::

    <workdir>/search.json       the config that created it (name + fingerprint)
    <workdir>/optuna.journal    the Optuna journal (one study per hardware profile)
    <workdir>/mlflow.db         the MLflow store; artifacts in <workdir>/mlartifacts/
    <workdir>/cache/            what model callables cache (e.g. trained weights)
    <workdir>/summary/<profile>/ the front table and figures, also logged to MLflow
    <workdir>/tightfit.log      the full log, tracebacks included
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from tightfit.config import SearchConfig, config_from_dict
from tightfit.exceptions import WorkdirError

IDENTITY = "search.json"


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
        stored = json.loads(identity.read_text())
        if stored.get("name") != config.name:
            raise WorkdirError(
                f"work directory '{workdir}' belongs to search '{stored.get('name')}', not '{config.name}'; "
                "choose another 'workdir' or remove that folder"
            )
        if stored.get("fingerprint") != config.fingerprint():
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


def load_workdir_config(workdir: Path) -> SearchConfig:
    """The config a work directory was created with (for export, pareto and ui)."""
    identity = Path(workdir) / IDENTITY
    if not identity.exists():
        raise WorkdirError(
            f"'{workdir}' is not a tightfit work directory (no {IDENTITY}); run 'tightfit search' first"
        )
    stored: dict[str, Any] = json.loads(identity.read_text())
    return config_from_dict(stored["config"], source=str(identity))
