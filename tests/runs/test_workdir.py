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


def test_a_search_resumes_across_an_upgrade_that_adds_fields(tmp_path: Path) -> None:
    """search.json written by an older tightfit: no field added since, and a fingerprint hashed
    without them. Read by this version it is the same config, so the search resumes; a config
    that really changed is still refused."""
    import json

    config = config_from_dict(
        {"name": "up", "model": "digits-cnn", "data": "digits", "workdir": str(tmp_path / "w")}
    )
    prepare_workdir(config)
    identity = tmp_path / "w" / "search.json"
    stored = json.loads(identity.read_text())
    old = stored["config"]
    for section, field in (("model", "hf"), ("data", "transform"), ("constraints",
                           "max_perplexity_increase"), ("ray", "ship")):  # fmt: skip
        del old[section][field]  # fields this version added
    stored["fingerprint"] = "0123456789abcdef"  # what the older version hashed
    identity.write_text(json.dumps(stored))
    assert prepare_workdir(config) == tmp_path / "w"
    changed = config.model_copy(update={"seed": 1})
    with pytest.raises(WorkdirError, match="different model, data, space"):
        prepare_workdir(changed)
