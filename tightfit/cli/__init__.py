"""The ``tightfit`` command: search, submit, status, logs, pareto, export, ui, profiles.

User mistakes (TightfitError) print one line per problem and exit 2; bugs exit 1 and keep their
traceback in ``<workdir>/tightfit.log`` and on stderr. Whatever is printed or logged has its
credentials redacted (``tightfit._secrets``).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from tightfit._secrets import redact
from tightfit.cli._cluster import cmd_logs, cmd_status, cmd_submit
from tightfit.cli._local import cmd_export, cmd_pareto, cmd_profiles, cmd_search, cmd_ui
from tightfit.exceptions import TightfitError

log = logging.getLogger("tightfit")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tightfit", description=__doc__.splitlines()[0])
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="show the traceback of a user error too"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("search", help="run (or resume) a search from a YAML config")
    p.add_argument("config", help="search YAML file, e.g. examples/digits.yaml")
    p.add_argument("--n-trials", type=int, default=None, help="override n_trials")
    p.add_argument("--workdir", default=None, help="override the work directory")
    p.set_defaults(func=cmd_search)

    address_help = "the cluster's job server, http://HEAD:8265 (default: $RAY_API_SERVER_ADDRESS)"
    p = sub.add_parser("submit", help="run a search on a Ray cluster, as a Ray Job")
    p.add_argument("config", help="search YAML file")
    p.add_argument("--address", default=None, help=address_help)
    p.add_argument(
        "--python",
        default=None,
        help="the interpreter on the head node that has tightfit's dependencies "
        "(default: this one's path, right when the cluster runs this machine's environment)",
    )
    p.add_argument(
        "--working-dir",
        default=None,
        help="project folder uploaded with the job: config, profiles, model code "
        "(default: the config's folder)",
    )
    p.add_argument(
        "--remote-workdir",
        default=None,
        help="work directory on the head node (default: the config's if absolute, "
        "else $HOME/tightfit-runs/<name>)",
    )
    p.add_argument("--n-trials", type=int, default=None, help="override n_trials")
    p.add_argument("--env", action="append", help="KEY=VALUE for the job's environment")
    p.add_argument(
        "--no-ship-tightfit",
        action="store_true",
        help="use the tightfit installed on the cluster instead of uploading this one",
    )
    p.add_argument("--follow", action="store_true", help="stream the logs until the job ends")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="list the files that would be uploaded and the command, submit nothing",
    )
    p.add_argument(
        "--include",
        action="append",
        metavar="PATTERN",
        help="upload files that are withheld by default (credentials, weights, databases) "
        "matching this gitignore-style pattern, e.g. 'weights/model.pt'",
    )
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("status", help="the tightfit jobs on a Ray cluster")
    p.add_argument("search", nargs="?", default=None, help="only this search's jobs")
    p.add_argument("--address", default=None, help=address_help)
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("logs", help="a submitted search's logs")
    p.add_argument("name", help="a search name (its latest job) or a submission id")
    p.add_argument("--address", default=None, help=address_help)
    p.add_argument("--follow", action="store_true", help="stream until the job ends")
    p.set_defaults(func=cmd_logs)

    p = sub.add_parser("pareto", help="print the Pareto front of a finished search")
    p.add_argument("--workdir", required=True)
    p.add_argument("--profile", default=None)
    p.set_defaults(func=cmd_pareto)

    p = sub.add_parser("export", help="replay Pareto candidates into engine files with a manifest")
    p.add_argument("--workdir", required=True)
    p.add_argument(
        "--pick",
        default="knee",
        help="knee | all (the front, re-measured together) | trial numbers: 7, or 3,7 (together)",
    )
    p.add_argument("--out", required=True)
    p.add_argument("--profile", default=None, help="which profile's front (default: the first)")
    p.add_argument(
        "--register",
        action="store_true",
        help="also register the engines in the MLflow Model Registry (aliases: knee, trial-N)",
    )
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("ui", help="start the MLflow UI for a work directory on 127.0.0.1")
    p.add_argument("--workdir", required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=5000)
    p.add_argument("--open", action="store_true", help="open the Pareto view in your browser")
    p.set_defaults(func=cmd_ui)

    p = sub.add_parser("profiles", help="list, show or calibrate hardware profiles")
    p.add_argument("action", choices=["list", "show", "calibrate"])
    p.add_argument("name", nargs="?", help="a built-in profile name or a profile .yaml file")
    p.add_argument("--config", help="calibrate: measure this search's model (default: example)")
    p.add_argument("--repeats", type=int, default=3, help="calibrate: independent A/A runs")
    p.add_argument("--max-rounds", type=int, default=40, help="calibrate: rounds per run")
    p.add_argument("--target-ci", type=float, default=None, help="calibrate: CI half-width wanted")
    p.add_argument("--save", help="calibrate: write the profile with the recommended rounds here")
    p.set_defaults(func=cmd_profiles)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except TightfitError as e:
        if args.verbose:  # where in tightfit the error was raised, for a bug report
            import traceback

            print(redact(traceback.format_exc()), file=sys.stderr, end="")
        for line in redact(str(e)).splitlines():
            print(f"tightfit: error: {line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if args.command == "search":
            print(
                "tightfit: interrupted; in-flight trials were marked and re-queued: rerun the same command to resume",
                file=sys.stderr,
            )
        else:
            print(f"tightfit: {args.command} interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if _disk_full(e):  # from any layer (MLflow's SQLite, Optuna's journal, Ray's spill files)
            log.exception("disk full")
            print(
                f"tightfit: error: the disk is full ({e}); free some space and rerun to resume",
                file=sys.stderr,
            )
            return 2
        log.exception("unexpected error (a bug in tightfit; please report it with this log)")
        import traceback

        print(redact(traceback.format_exc()), file=sys.stderr, end="")  # credentials never
        where = f"; the traceback is also in {_log_path()}" if _log_path() else ""
        print(
            f"tightfit: internal error: {redact(f'{type(e).__name__}: {e}'.splitlines()[0])} "
            f"(a bug in tightfit; please report it{where})",
            file=sys.stderr,
        )
        return 1


def _log_path() -> Path | None:
    """The log file this command writes (``tightfit search``'s), if it exists."""
    for h in logging.getLogger().handlers:
        if isinstance(h, logging.FileHandler) and Path(h.baseFilename).exists():
            return Path(h.baseFilename)
    return None


def _disk_full(exc: BaseException | None) -> bool:
    import errno

    while exc is not None:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "database or disk is full" in str(exc) or "No space left on device" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["build_parser", "main"]
