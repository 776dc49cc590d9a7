"""User mistakes give one clear line on stderr and exit 2, not a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import assert_user_error, tightfit


def config(tmp_path: Path, body: str) -> str:
    path = tmp_path / "search.yaml"
    path.write_text(f"workdir: {tmp_path / 'work'}\n" + body)
    return str(path)


def test_bad_config(tmp_path: Path) -> None:
    path = config(
        tmp_path,
        "name: t\nmodel: {callable: digits-cnn}\ndata: {callable: digits}\nspace: {prune: {ratios: [0, 0.5, 1.5]}}\n",
    )
    assert_user_error(tightfit("search", path), "space.prune.ratios[2] must be in [0, 1), got 1.5")


def test_malformed_yaml(tmp_path: Path) -> None:
    path = config(tmp_path, "name: t\nmodel: {callable: digits-cnn\n")
    assert_user_error(tightfit("search", path), "not valid YAML", "line")


def test_wrong_type(tmp_path: Path) -> None:
    path = config(
        tmp_path,
        "name: t\nmodel: {callable: digits-cnn}\ndata: {callable: digits}\nn_trials: lots\n",
    )
    assert_user_error(
        tightfit("search", path), "n_trials input should be a valid integer", "got 'lots'"
    )


def test_unknown_sampler_and_kernel(tmp_path: Path) -> None:
    body = "name: t\nmodel: {callable: digits-cnn}\ndata: {callable: digits}\n"
    result = tightfit("search", config(tmp_path, body + "sampler: {name: cmaes}\n"))
    assert_user_error(
        result, "sampler.name input should be 'tpe', 'nsga2', 'random', 'qmc' or 'mutate'"
    )
    result = tightfit("search", config(tmp_path, body + "space: {distill: {}}\n"))
    assert_user_error(
        result, "space.distill is not a known field (valid: prune, lowrank, quantize, kernels)"
    )


def test_unknown_profile(tmp_path: Path) -> None:
    path = config(
        tmp_path,
        "name: t\nmodel: {callable: digits-cnn}\ndata: {callable: digits}\nprofiles: [tpu-v9]\n",
    )
    assert_user_error(
        tightfit("search", path), "unknown hardware profile 'tpu-v9'", "valid: cpu-ort"
    )


def test_model_that_cannot_be_exported(tmp_path: Path) -> None:
    path = config(
        tmp_path,
        "name: t\nmodel: {callable: 'tests.models:unexportable'}\ndata: {callable: digits}\n",
    )
    assert_user_error(tightfit("search", path), "cannot be exported to ONNX", "bessel_j0")


def test_model_callable_of_the_wrong_type(tmp_path: Path) -> None:
    path = config(
        tmp_path,
        "name: t\nmodel: {callable: 'tests.models:not_a_module'}\ndata: {callable: digits}\n",
    )
    assert_user_error(tightfit("search", path), "returned str, expected a torch.nn.Module")


def test_missing_module(tmp_path: Path) -> None:
    path = config(
        tmp_path, "name: t\nmodel: {callable: 'nosuchpkg.models:net'}\ndata: {callable: digits}\n"
    )
    assert_user_error(tightfit("search", path), "cannot import module 'nosuchpkg.models'")


@pytest.mark.parametrize(
    "args",
    [
        ("export", "--workdir", "/nonexistent", "--out", "/tmp/x"),
        ("pareto", "--workdir", "/nonexistent"),
    ],
)
def test_not_a_workdir(args: tuple[str, ...]) -> None:
    assert_user_error(tightfit(*args), "not a tightfit work directory")


def test_profiles_list_and_show() -> None:
    listed = tightfit("profiles", "list")
    assert listed.returncode == 0 and "cpu-ort" in listed.stdout
    shown = tightfit("profiles", "show", "cpu-ort")
    assert shown.returncode == 0 and "intra_op_threads: 2" in shown.stdout
    assert_user_error(tightfit("profiles", "show", "nope"), "unknown hardware profile 'nope'")


def test_model_callable_that_fails(tmp_path: Path) -> None:
    path = config(
        tmp_path,
        "name: t\nmodel: {callable: 'tests.models:broken_model'}\ndata: {callable: digits}\n",
    )
    assert_user_error(
        tightfit("search", path),
        "model.callable 'tests.models:broken_model' failed",
        "weights file is corrupt",
    )


def test_data_of_the_wrong_shape(tmp_path: Path) -> None:
    path = config(
        tmp_path,
        "name: t\nmodel: {callable: 'tests.models:tiny_resnet'}\ndata: {callable: 'tests.models:wrong_length_targets'}\n",
    )
    assert_user_error(
        tightfit("search", path), "targets has 7 entries but validation has [10] samples"
    )


def test_data_that_does_not_fit_the_model(tmp_path: Path) -> None:
    path = config(
        tmp_path, "name: t\nmodel: {callable: 'tests.models:token_mlp'}\ndata: {callable: digits}\n"
    )
    assert_user_error(tightfit("search", path), "fails on the data's inputs [(2, 1, 16, 16)]")


def test_impossible_latency_limit(tmp_path: Path, fast_profile_file: Path) -> None:
    path = config(
        tmp_path,
        "name: t\nmodel: {callable: 'tests.models:tiny_resnet'}\ndata: {callable: digits}\n"
        f"profiles: ['{fast_profile_file}']\nconstraints: {{max_latency_ms: 0.000001}}\nray: {{num_cpus: 2}}\n",
    )
    assert_user_error(
        tightfit("search", path),
        "constraints.max_latency_ms = 1e-06 ms cannot be met on cpu-ort-fast",
    )


def test_workdir_of_another_search(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (work / "search.json").write_text('{"name": "someone-else", "fingerprint": "x", "config": {}}')
    path = config(tmp_path, "name: t\nmodel: {callable: digits-cnn}\ndata: {callable: digits}\n")
    assert_user_error(tightfit("search", path), "belongs to search 'someone-else'")


def test_disk_full_anywhere_is_one_clear_line(monkeypatch, capsys) -> None:
    import argparse
    import errno

    from tightfit import cli

    def fills_the_disk(args: argparse.Namespace) -> int:
        raise RuntimeError("write failed") from OSError(errno.ENOSPC, "No space left on device")

    parser = argparse.ArgumentParser()
    parser.set_defaults(func=fills_the_disk)
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    assert cli.main([]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tightfit: error: the disk is full") and "rerun to resume" in err


def test_submit_dry_run_lists_the_upload_and_withholds_secrets(tmp_path: Path) -> None:
    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    (project / "search.yaml").write_text(
        "name: t\nmodel: {callable: digits-cnn}\ndata: {callable: digits}\n"
    )
    (project / "src" / "model.py").write_text("x = 1\n")
    for name in (".env", "deploy.pem", "tls.key", ".netrc", "weights.pt", "cache.db"):
        (project / name).write_text("secret")
    (project / ".gitignore").write_text("scratch/\n")
    (project / "scratch").mkdir()
    (project / "scratch" / "big.txt").write_text("ignored")
    result = tightfit(
        "submit", str(project / "search.yaml"), "--dry-run", "--include", "weights.pt"
    )
    assert result.returncode == 0, result.stderr
    listed = [ln.split()[-1] for ln in result.stdout.splitlines() if ln.startswith("  ")]
    assert sorted(listed) == [".gitignore", "search.yaml", "src/model.py", "weights.pt"]
    withheld = next(ln for ln in result.stdout.splitlines() if ln.startswith("not uploaded"))
    for name in (".env", "deploy.pem", "tls.key", ".netrc", "cache.db"):
        assert name in withheld
    assert "dry run: nothing submitted" in result.stdout


def test_ui_warns_before_serving_beyond_loopback(tmp_path: Path, monkeypatch, capsys) -> None:
    import os

    from tightfit import cli
    from tightfit.config import config_from_dict
    from tightfit.workdir import prepare_workdir

    workdir = prepare_workdir(
        config_from_dict(
            {
                "name": "t",
                "model": {"callable": "digits-cnn"},
                "data": {"callable": "digits"},
                "workdir": str(tmp_path / "w"),
            }
        )
    )
    started: list[list[str]] = []
    monkeypatch.setattr(os, "execve", lambda exe, cmd, env: started.append(cmd))
    for host, warned in (("0.0.0.0", True), ("127.0.0.1", False), ("::1", False)):
        assert cli.main(["ui", "--workdir", str(workdir), "--host", host]) == 0
        err = capsys.readouterr().err
        assert ("has no login" in err) == warned, host
    assert [c[c.index("--host") + 1] for c in started] == ["0.0.0.0", "127.0.0.1", "::1"]


def test_ctrl_c_in_a_read_only_command_does_not_talk_of_trials(monkeypatch, capsys) -> None:
    from tightfit import cli

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "cmd_pareto", interrupted)
    assert cli.main(["pareto", "--workdir", "x"]) == 130
    err = capsys.readouterr().err
    assert err.strip() == "tightfit: pareto interrupted" and "re-queued" not in err


def test_verbose_shows_where_a_user_error_was_raised(tmp_path: Path) -> None:
    path = config(tmp_path, "name: t\nmodel: {callable: digits-cnn}\ndata: {callable: digits}\n")
    Path(path).write_text(Path(path).read_text() + "profiles: [tpu-v9]\n")
    quiet, verbose = tightfit("search", path), tightfit("-v", "search", path)
    assert_user_error(quiet, "unknown hardware profile 'tpu-v9'")
    assert verbose.returncode == 2
    assert "Traceback" in verbose.stderr and "tightfit/config/" in verbose.stderr
    assert verbose.stderr.rstrip().splitlines()[-1].startswith("tightfit: error: ")
