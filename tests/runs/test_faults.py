"""Faults that used to lose or mislead: each test here failed on the code before its fix.

The work-directory lock, a corrupt search.json, a torn or corrupt Optuna journal, MLflow store
errors, read-only commands on a work directory with no study, and an export interrupted half
way. Each uses the real part (a real journal, a real MLflow SQLite store, a real process
holding the lock).
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import search_config
from tightfit.exceptions import WorkdirError
from tightfit.runs import export as export_module
from tightfit.runs._tracker import Tracker, store_problem
from tightfit.studies import check_journal, load_study, open_study
from tightfit.workdir import load_workdir_config, prepare_workdir, workdir_lock

ROOT = Path(__file__).resolve().parents[2]


def _config(workdir: Path, **extra: object):
    return search_config(workdir, name="faults", **extra)


def test_a_second_search_is_refused_while_the_first_holds_the_workdir(tmp_path: Path) -> None:
    workdir = tmp_path / "work"
    workdir.mkdir()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path\n"
            "from tightfit.workdir import workdir_lock\n"
            "with workdir_lock(Path(sys.argv[1])):\n"
            "    print('held', flush=True); time.sleep(60)\n",
            str(workdir),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(
            WorkdirError, match=f"in use by another tightfit search \\(PID {holder.pid} "
        ):
            with workdir_lock(workdir):
                pass
    finally:
        holder.kill()
        holder.wait()
    with workdir_lock(workdir):  # the kernel released the dead holder's lock: nothing stale
        pass


def test_a_corrupt_search_json_is_a_one_line_error(tmp_path: Path) -> None:
    workdir = prepare_workdir(_config(tmp_path / "work"))
    (workdir / "search.json").write_text('{"name": "faults", "fingerprint": ')
    with pytest.raises(WorkdirError, match="search.json' is corrupt .*restore it"):
        load_workdir_config(workdir)
    with pytest.raises(WorkdirError, match="is corrupt"):
        prepare_workdir(_config(workdir))


def _journal_with_trials(tmp_path: Path, n: int = 3):
    config = _config(tmp_path / "work")
    prepare_workdir(config)
    study = open_study(config, "cpu-ort")
    for i in range(n):
        study.tell(study.ask(), [0.9 + i / 100, 1.0, 1.0])
    return config, config.workdir_path / "optuna.journal"


@pytest.mark.parametrize("whole", [False, True], ids=["partial-record", "missing-newline"])
def test_a_torn_journal_tail_is_repaired_with_a_backup(tmp_path: Path, whole: bool) -> None:
    config, journal = _journal_with_trials(tmp_path)
    raw = journal.read_bytes()
    last = raw[:-1].rsplit(b"\n", 1)[1]
    torn = raw[:-1] if whole else raw + last[: len(last) // 2]  # as a full disk leaves it
    journal.write_bytes(torn)
    study = open_study(config, "cpu-ort")  # a search run repairs it
    backups = list(journal.parent.glob("optuna.journal.torn-*.bak"))
    assert len(backups) == 1 and backups[0].read_bytes() == torn
    assert journal.read_bytes().endswith(b"\n")
    study.tell(study.ask(), [0.5, 1.0, 1.0])  # the next append leaves a readable journal
    reopened = load_study(config, "cpu-ort")
    assert len(reopened.trials) == 4
    check_journal(journal, repair=False)  # and a whole one


def test_a_journal_corrupt_before_its_end_is_refused(tmp_path: Path) -> None:
    config, journal = _journal_with_trials(tmp_path)
    lines = journal.read_bytes().split(b"\n")
    lines[2] = lines[2][:10]
    journal.write_bytes(b"\n".join(lines))
    with pytest.raises(WorkdirError, match="journal .* is corrupt at line 3"):
        open_study(config, "cpu-ort")


def test_read_only_commands_never_create_a_journal(tmp_path: Path) -> None:
    config = _config(tmp_path / "work")
    workdir = prepare_workdir(config)
    with pytest.raises(WorkdirError, match="has no study yet"):
        load_study(config, "cpu-ort", workdir)
    assert not (workdir / "optuna.journal").exists()
    open_study(config, "cpu-ort")
    with pytest.raises(WorkdirError, match="no study for profile 'gpu-x' \\(studies: cpu-ort\\)"):
        load_study(config, "gpu-x", workdir)


def test_pareto_on_a_fresh_workdir_is_one_line_and_writes_nothing(tmp_path: Path) -> None:
    config = _config(tmp_path / "work")
    workdir = prepare_workdir(config)
    before = sorted(p.name for p in workdir.iterdir())
    for args in (
        ["--workdir", str(workdir)],
        ["--workdir", str(workdir), "--profile", "cpu-ort-1t"],
    ):
        result = subprocess.run(
            [sys.executable, "-m", "tightfit.cli", "pareto", *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr and "KeyError" not in result.stderr
        errors = [ln for ln in result.stderr.splitlines() if ln.startswith("tightfit: error:")]
        assert errors == [errors[0]] and "search 'faults' has no study" in errors[0]
        assert "interrupted" not in result.stderr
    assert sorted(p.name for p in workdir.iterdir()) == before


def test_a_corrupt_mlflow_store_is_a_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "mlflow.db").write_bytes(b"\x13not sqlite at all" * 300)
    with pytest.raises(WorkdirError) as info:
        Tracker(tmp_path, "s")
    message = str(info.value)
    assert "\n" not in message and "is corrupt" in message and "move" in message


def test_an_mlflow_store_of_another_version_is_named(tmp_path: Path) -> None:
    Tracker(tmp_path, "s")
    with sqlite3.connect(tmp_path / "mlflow.db") as db:
        db.execute("UPDATE alembic_version SET version_num = 'ffffffffffff'")
    # MLflow caches the store per URI in a process: open it from a fresh one
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from pathlib import Path\n"
            "from tightfit.runs._tracker import Tracker\n"
            "from tightfit.exceptions import WorkdirError\n"
            "try:\n    Tracker(Path(sys.argv[1]), 's')\n"
            "except WorkdirError as e:\n    print(e)\n",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "written by another MLflow version" in result.stdout, result.stderr
    assert "mlflow db upgrade" in result.stdout


def test_a_locked_mlflow_store_is_waited_for(tmp_path: Path) -> None:
    tracker = Tracker(tmp_path, "s")
    run_id = tracker.start_trial("p", 0, {"a": 1})
    holder = subprocess.Popen(  # another process writing, for longer than SQLite's busy timeout
        [
            sys.executable,
            "-c",
            "import sqlite3, sys, time\n"
            "db = sqlite3.connect(sys.argv[1], timeout=0, isolation_level=None)\n"
            "db.execute('BEGIN EXCLUSIVE'); print('locked', flush=True)\n"
            "time.sleep(8); db.execute('ROLLBACK')\n",
            str(tmp_path / "mlflow.db"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        t0 = time.monotonic()
        tracker.finish_trial(run_id, {"accuracy": 0.9}, status="complete", feasible=True)
        waited = time.monotonic() - t0
    finally:
        holder.wait(timeout=30)
    assert waited > 5  # it waited for the lock instead of failing the search
    assert tracker.client.get_run(run_id).data.metrics["accuracy"] == 0.9


def test_store_problem_reads_any_layer() -> None:
    try:
        try:
            raise sqlite3.OperationalError("database is locked")
        except sqlite3.OperationalError as inner:
            raise RuntimeError("log_batch failed") from inner
    except RuntimeError as e:
        assert store_problem(e) == "locked"
    assert store_problem(ValueError("a bug")) is None


def test_an_engine_is_published_with_its_manifest(tmp_path: Path) -> None:
    out = tmp_path / "engines"
    target = out / "s-cpu-ort-trial0001"
    staging = target.with_name(export_module.STAGING + target.name)
    staging.mkdir(parents=True)
    (staging / "model.onnx").write_bytes(b"new")
    # an interrupted export leaves only a hidden staging folder, never a bare engine
    assert [p.name for p in out.iterdir()] == [staging.name]
    (staging / "manifest.json").write_text("{}")
    target.mkdir()
    (target / "model.onnx").write_bytes(b"old")
    export_module._publish(staging, target)
    assert (target / "model.onnx").read_bytes() == b"new"
    assert (target / "manifest.json").exists()
    assert [p.name for p in out.iterdir()] == [target.name]
    (out / f"{export_module.STAGING}x").mkdir()
    export_module._remove_staging(out)
    assert [p.name for p in out.iterdir()] == [target.name]


def test_journal_helper_rejects_nothing_on_a_healthy_journal(tmp_path: Path) -> None:
    _, journal = _journal_with_trials(tmp_path, n=2)
    check_journal(journal, repair=True)
    assert not list(journal.parent.glob("*.bak"))
    assert all(json.loads(line) for line in journal.read_text().splitlines())


def test_scratch_folders_of_dead_processes_are_removed(tmp_path, monkeypatch) -> None:
    """Ray kills its workers at shutdown, so their workspace folders outlive them; the next
    workspace removes those whose process is gone, and only those."""
    import tempfile

    from tightfit.workspace import OWNER_FILE, SCRATCH_PREFIX, scratch_dir

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead, alive, unmarked = (tmp_path / f"{SCRATCH_PREFIX}{n}" for n in ("dead", "alive", "old"))
    for folder, owner in ((dead, gone.stdout.strip()), (alive, str(os.getpid())), (unmarked, None)):
        folder.mkdir()
        (folder / "baseline.onnx").write_bytes(b"x")
        if owner:
            (folder / OWNER_FILE).write_text(owner)
    made = scratch_dir()
    assert not dead.exists() and alive.exists() and unmarked.exists()
    assert (Path(made.name) / OWNER_FILE).read_text() == str(os.getpid())
    made.cleanup()
