from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from tightfit.config import config_from_dict
from tightfit.exceptions import WorkdirError
from tightfit.workdir import atomic_write, prepare_workdir


def test_atomic_write_replaces_whole_files(tmp_path: Path) -> None:
    target = atomic_write(tmp_path / "a" / "front.csv", "x,y\n1,2\n")
    assert target.read_text() == "x,y\n1,2\n"
    assert oct(target.stat().st_mode & 0o777) != oct(0o600)
    atomic_write(target, b"new")
    assert target.read_bytes() == b"new" and [p.name for p in target.parent.iterdir()] == [
        "front.csv"
    ]


def test_disk_full_is_reported_and_the_old_file_kept(tmp_path: Path, monkeypatch) -> None:
    target = atomic_write(tmp_path / "manifest.json", "{}")

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)  # where a full disk surfaces for buffered writes
    with pytest.raises(WorkdirError, match="cannot write .*manifest.json.*No space left on device"):
        atomic_write(target, "{" + "x" * 100_000 + "}")
    monkeypatch.undo()
    assert target.read_text() == "{}"
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]  # no temporary left behind


def test_unusable_workdir_is_reported(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    config = config_from_dict(
        {
            "name": "t",
            "model": {"callable": "digits-cnn"},
            "data": {"callable": "digits"},
            "workdir": str(blocker / "work"),
        }
    )
    with pytest.raises(WorkdirError, match="is not writable .*set 'workdir'"):
        prepare_workdir(config)
