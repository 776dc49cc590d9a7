"""The commands on a Ray cluster's searches: submit, status, logs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tightfit.cli._text import _console
from tightfit.keys import Tag


def cmd_submit(args: argparse.Namespace) -> int:
    from tightfit.search import jobs

    env = {}
    for item in args.env or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise jobs.JobError(f"--env {item!r}: write it as KEY=VALUE")
        env[key] = value
    s = jobs.submit(
        Path(args.config),
        args.address,
        python=args.python,
        working_dir=Path(args.working_dir) if args.working_dir else None,
        remote_workdir=args.remote_workdir,
        ship_tightfit=not args.no_ship_tightfit,
        env=env,
        n_trials=args.n_trials,
        include=args.include,
        dry_run=args.dry_run,
    )
    console = _console()
    upload = s.upload
    assert upload is not None
    if args.dry_run:
        for rel, size in upload.files:
            print(f"  {size:>12,d}  {rel}")
    print(
        f"uploads {len(upload.files)} files, {upload.total_bytes / 1e6:.1f} MB, from {upload.root}"
        + ("" if args.dry_run else " (tightfit submit --dry-run lists them)")
    )
    if upload.withheld:
        print(
            f"not uploaded (credentials, weights, databases): {', '.join(upload.withheld)}; "
            "--include PATTERN sends one that the job needs"
        )
    if args.dry_run:
        print(f"dry run: nothing submitted; the job would run: {s.entrypoint}")
        return 0
    console.print(f"submitted [bold]{s.submission_id}[/]: {s.entrypoint}")
    console.print(
        f"  project {s.working_dir} uploaded; study and MLflow store in {s.remote_workdir} "
        "on the head node (unless the config names a tracking server)"
    )
    if not args.follow:
        console.print(
            f"  follow it: tightfit logs {s.submission_id} --follow   ·   tightfit status"
        )
        return 0
    status = jobs.follow(
        jobs.client(args.address), s.submission_id, lambda t: print(t, end="", flush=True)
    )
    console.print(f"job {s.submission_id}: {status}")
    return 0 if status == "SUCCEEDED" else 1


def cmd_status(args: argparse.Namespace) -> int:
    from rich.table import Table

    from tightfit.search import jobs

    client = jobs.client(args.address)
    found = jobs.jobs_of(client, args.search)
    if not found:
        _console().print(
            "no tightfit jobs on this cluster" + (f" for '{args.search}'" if args.search else "")
        )
        return 0
    rows = [
        [
            j.submission_id,
            (j.metadata or {}).get(Tag.SEARCH, ""),
            jobs.status_text(j.status),
            _when(j.start_time),
            _when(j.end_time),
            (j.message or "").replace("\n", " "),
        ]
        for j in found
    ]
    console = _console()
    if not console.is_terminal:  # piped: whole lines, one job each, for grep and scripts
        for row in rows:
            print("\t".join(row))
        return 0
    table = Table(title="tightfit jobs")
    for col in ("submission id", "search", "status", "started", "ended"):
        table.add_column(col, no_wrap=True)
    table.add_column("message", overflow="ellipsis", max_width=40)
    for row in rows:
        table.add_row(*row)
    console.print(table)
    return 0


def _when(ms: int | None) -> str:
    import datetime

    if not ms:
        return ""
    return datetime.datetime.fromtimestamp(ms / 1000).strftime("%Y-%m-%d %H:%M:%S")


def cmd_logs(args: argparse.Namespace) -> int:
    from tightfit.search import jobs

    client = jobs.client(args.address)
    job = jobs.find_job(client, args.name)
    if args.follow:
        status = jobs.follow(client, job.submission_id, lambda t: print(t, end="", flush=True))
        print(f"job {job.submission_id}: {status}", file=sys.stderr)
        return 0 if status == "SUCCEEDED" else 1
    print(client.get_job_logs(job.submission_id), end="")
    return 0
