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
from typing import Any

from tightfit._secrets import RedactingFilter, redact
from tightfit.exceptions import TightfitError
from tightfit.keys import StudyAttr, Tag

log = logging.getLogger("tightfit")


def _console() -> Any:
    from rich.console import Console

    return Console()


def _setup_logging(workdir: Path | None) -> None:
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    for noisy in ("mlflow", "alembic", "sqlalchemy", "ray", "urllib3", "matplotlib", "onnxruntime"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if workdir is not None:
        workdir.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(workdir / "tightfit.log")
        handler.addFilter(RedactingFilter())
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
    for h in root.handlers:  # every handler, not only ours: credentials never reach a log
        if not any(isinstance(f, RedactingFilter) for f in h.filters):
            h.addFilter(RedactingFilter())


def _front_table(front: Any, title: str, objectives: list[str]) -> Any:
    """The feasible Pareto front as a rich table (``tightfit search`` and ``tightfit pareto``)."""
    from rich.table import Table

    table = Table(title=f"{title}: Pareto front ({len(front)} points, feasible only)")
    for col in ["trial", *objectives, "speedup", "knobs"]:
        table.add_column(col, justify="left" if col in ("trial", "knobs") else "right")
    for _, row in front.iterrows():
        cells = [str(int(row["trial"]))]
        for o in objectives:
            cells.append(f"{row[o]:.4f}" if o == "accuracy" else f"{row[o]:.3f}")
        cells.append(f"{row['speedup']:.2f}x" if row["speedup"] is not None else "")
        cells.append(str(row["knobs"]))
        table.add_row(*cells)
    return table


def cmd_search(args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from tightfit.config import load_config
    from tightfit.runs import run_search
    from tightfit.search import Progress as SearchProgress

    overrides: dict[str, Any] = {}
    if args.n_trials is not None:
        overrides["n_trials"] = args.n_trials
    if args.workdir is not None:
        overrides["workdir"] = args.workdir
    config = load_config(args.config, overrides)
    _setup_logging(config.workdir_path)
    console = _console()
    console.print(f"[bold]tightfit[/] search '{config.name}' → {config.workdir_path}")
    columns = [
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
    ]
    with Progress(*columns, console=console, transient=False) as bar:
        tasks: dict[str, Any] = {}

        def progress(p: SearchProgress) -> None:
            if p.profile not in tasks:
                tasks[p.profile] = bar.add_task(p.profile, total=p.total, status="")
            best = p.best_speedup
            best_text = f"best ×{best:.2f} within constraint" if best else "no feasible speedup yet"
            status = f"{p.failed} failed · {best_text}"
            bar.update(tasks[p.profile], completed=min(p.done, p.total), status=status)

        outcome = run_search(config, progress=progress)
    for p in outcome.profiles:
        console.print(
            _front_table(p.front, f"{config.name} on {p.profile}", list(config.objectives))
        )
        if p.aa_check:
            console.print(_aa_text(p.aa_check), soft_wrap=True)
        if p.study.user_attrs.get(StudyAttr.RECIPE):
            console.print(_recipe_text(p.study), soft_wrap=True)
        console.print(
            f"baseline on {p.profile}: accuracy {p.baseline['accuracy']:.4f}, "
            f"latency {p.baseline['latency_ms']:.3f} ms, size {p.baseline['size_mb']:.2f} MB; "
            f"{p.n_complete} trials, {p.n_failed} failed; front figure: {p.summary_dir / 'front.html'}"
        )
    console.print(
        f"MLflow: run [bold]tightfit ui --workdir {outcome.workdir}[/] and open {outcome.ui_url}",
        soft_wrap=True,  # a wrapped link cannot be copied
    )
    return 0


def cmd_pareto(args: argparse.Namespace) -> int:
    from tightfit.runs import front_frame
    from tightfit.runs.export import profile_name
    from tightfit.studies import load_study
    from tightfit.workdir import load_workdir_config

    workdir = Path(args.workdir).resolve()
    config = load_workdir_config(workdir)
    console = _console()
    for profile in [args.profile] if args.profile else config.profiles:
        name = profile_name(profile)
        study = load_study(config, name, workdir)
        front = front_frame(study)
        console.print(_front_table(front, f"{config.name} on {name}", list(config.objectives)))
        if study.user_attrs.get(StudyAttr.AA_CHECK):
            console.print(_aa_text(study.user_attrs[StudyAttr.AA_CHECK]), soft_wrap=True)
        if study.user_attrs.get(StudyAttr.RECIPE):
            console.print(_recipe_text(study), soft_wrap=True)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from rich.table import Table

    from tightfit.runs.export import export

    results = export(
        Path(args.workdir),
        pick=args.pick,
        out=Path(args.out),
        profile=args.profile,
        register=args.register,
    )
    console = _console()
    table = Table(title="exported engines: logged vs re-measured")
    for c in [
        "trial",
        "file",
        "accuracy (logged → now)",
        "latency ms (logged → now)",
        "latency ratio logged [95% CI]",
        "ratio now [95% CI]",
        "a re-measurement lands in (95%)",
        "agree?",
    ]:
        table.add_column(c)
    for r in results:
        table.add_row(
            str(r.trial),
            str(r.path),
            f"{r.logged['accuracy']:.4f} → {r.measured['accuracy']:.4f}",
            f"{r.logged['latency_ms']:.3f} → {r.measured['latency_ms']:.3f} ({r.latency_change:+.1%})",
            _ratio_text(r.ratio_logged),
            _ratio_text(r.ratio_now),
            "?" if r.expected is None else f"[{r.expected[0]:.3f}, {r.expected[1]:.3f}]",
            {True: "yes", False: "[bold red]NO[/]", None: "?"}[r.agrees],
        )
    console.print(table)
    console.print(
        "latency now = the re-measured ratio to the baseline x the search's reference latency "
        "(the manifest has the baseline's latency now, to see the machine's drift); a "
        "re-measurement lands within both measurements' noise, or within how far this search's "
        "own repeated measurements disagreed where that is wider (repeat_error)",
        soft_wrap=True,
    )
    for r in results:
        if r.agrees is False:
            console.print(
                f"[bold]trial {r.trial}[/]: the re-measured latency ratio "
                f"{_ratio_text(r.ratio_now)} is outside the range a re-measurement of the "
                f"logged {_ratio_text(r.ratio_logged)} lands in: the machine's state differs "
                "from the search's "
                "(load, frequency, another process); measure again on a quiet machine before "
                "relying on either number",
                soft_wrap=True,
            )
    for r in results:
        if r.registered:
            console.print(f"trial {r.trial} registered: {r.registered}", soft_wrap=True)
    return 0


def _loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _aa_text(aa: dict[str, Any]) -> str:
    """The search's A/A check as one line; a warning when it exceeded the tolerance."""
    low, high = aa["ratio_ci"]
    text = (
        f"A/A check (the baseline against itself): ratio {aa['ratio']:.3f} [{low:.3f}, "
        f"{high:.3f}], error {aa['error']:.1%} (tolerance {aa['tolerance']:.1%})"
    )
    if aa["exceeded"]:
        return (
            f"[bold red]{text}: this machine measured noisily, so speedups within "
            f"{aa['error']:.0%} of each other are not told apart[/]"
        )
    return text


def _recipe_text(study: Any) -> str:
    """The standard recipe beside the front (measured in the same rounds), as one line."""
    from tightfit.search import recipe_metrics as metrics

    recipe = study.user_attrs[StudyAttr.RECIPE]
    parts = [
        f"{v} {r['speedup']:.2f}x (accuracy {r['accuracy']:.4f}"
        f"{'' if r['feasible'] else ', infeasible'})"
        for v, r in recipe.items()
    ]
    m = metrics(study)
    text = "standard recipe, measured in the same rounds as the front: " + ", ".join(parts)
    if "speedup_over_recipe" in m:
        text += (
            f"; tightfit's best feasible {m['best_feasible_speedup_joint']:.2f}x is "
            f"[bold]{m['speedup_over_recipe']:.2f}x[/] the recipe's best feasible "
            f"{m['recipe_best_speedup']:.2f}x"
        )
    elif "recipe_best_speedup" not in m:
        text += "; no variant meets the accuracy constraint"
    return text


def _ratio_text(ratio: tuple[float, float, float] | None) -> str:
    return "n/a" if ratio is None else f"{ratio[0]:.3f} [{ratio[1]:.3f}, {ratio[2]:.3f}]"


def cmd_ui(args: argparse.Namespace) -> int:
    import os

    from tightfit.runs._tracker import Tracker, tracking_uri
    from tightfit.workdir import load_workdir_config

    workdir = Path(args.workdir).resolve()
    config = load_workdir_config(workdir)
    remote = config.mlflow.tracking_uri
    if remote and remote.startswith(("http://", "https://")):
        tracker = Tracker(workdir, config.name, uri=remote)
        print(
            f"search '{config.name}' logs to the tracking server {remote}: open {tracker.ui_url()}"
        )
        return 0
    if not _loopback(args.host):
        print(
            f"tightfit: warning: --host {args.host} serves the MLflow UI beyond this machine, and "
            "it has no login: anyone who reaches the port can read and change every run. "
            "Prefer an SSH tunnel (ssh -L 5000:127.0.0.1:5000 HOST) to the default 127.0.0.1",
            file=sys.stderr,
        )
    tracker = Tracker(workdir, config.name, objectives=list(config.objectives))
    url = tracker.ui_url(f"http://{args.host}:{args.port}")
    # One worker and no job runner: 0.5 GB and 8 s to start instead of 2.3 GB and 17 s.
    cmd = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", tracking_uri(workdir),
        "--host", args.host, "--port", str(args.port), "--workers", "1",
    ]  # fmt: skip
    print(f"MLflow UI for '{config.name}' at {url}  (Ctrl-C to stop)", flush=True)
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    if args.open:  # a helper waits for the server, then opens the page in the default browser
        import subprocess

        opener = (
            "import sys, time, urllib.request, webbrowser\n"
            "for _ in range(240):\n"
            "    try:\n"
            "        urllib.request.urlopen(sys.argv[1] + '/health', timeout=1); break\n"
            "    except OSError: time.sleep(0.5)\n"
            "webbrowser.open(sys.argv[2])\n"
        )
        base = f"http://{args.host}:{args.port}"
        subprocess.Popen([sys.executable, "-c", opener, base, url], start_new_session=True)
    os.execve(sys.executable, cmd, env)  # the server replaces this process: signals reach it
    return 0


def cmd_profiles(args: argparse.Namespace) -> int:
    from tightfit.hardware_profiles import get_profile, list_profiles

    if args.action == "list":
        for name in list_profiles():
            print(f"{name:20s} {get_profile(name).description}")
        return 0
    if not args.name:
        raise TightfitError(
            f"profiles {args.action}: give a profile name, e.g. 'tightfit profiles {args.action} cpu-ort'"
        )
    if args.action == "calibrate":
        return _calibrate(args)
    print(get_profile(args.name).to_yaml(), end="")
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    import tempfile

    from tightfit.evaluators import input_feed
    from tightfit.evaluators.calibrate import calibrate, calibrated_profile
    from tightfit.evaluators.runtimes import require_runtime
    from tightfit.hardware_profiles import get_profile
    from tightfit.workdir import atomic_write

    profile = get_profile(args.name)
    require_runtime(profile)
    with tempfile.TemporaryDirectory(prefix="tightfit-calibrate-") as tmp:
        if args.config:
            from tightfit.config import load_config
            from tightfit.workspace import Setup, workspace

            config = load_config(args.config)
            ws = workspace(
                Setup(config=config, profile=profile, cache_dir=str(config.workdir_path / "cache"))
            )
            model, (shapes, dtypes) = ws.baseline_onnx, ws.input_spec()
            what = f"the baseline of {args.config}"
        else:  # latency needs no trained weights: the example network, randomly initialised
            import torch

            from tightfit.examples.digits import DigitsResNet
            from tightfit.kernels import export_onnx

            torch.manual_seed(0)
            model = export_onnx(
                DigitsResNet(48).eval(),
                (torch.randn(2, 1, 16, 16),),
                ("image",),
                Path(tmp) / "m.onnx",
            )
            if profile.float_precision == "fp16":
                from tightfit.kernels.precision import to_float16

                model = to_float16(model, Path(tmp) / "m16.onnx")
            shapes, dtypes = {"image": (1, 16, 16)}, {"image": "float32"}
            what = "the digits example network (random weights)"
        feed = input_feed(shapes, dtypes, profile, seed=0)
        print(
            f"calibrating {profile.name} with {what}: {args.repeats} A/A runs of {args.max_rounds} rounds"
        )
        result = calibrate(
            profile,
            model,
            feed,
            repeats=args.repeats,
            max_rounds=args.max_rounds,
            target_ci=args.target_ci,
        )
    print(f"  model latency           {result.model_ms:.4f} ms")
    print(
        f"  block CV                {result.block_cv:.2%}  (one model, block medians across rounds)"
    )
    print(f"  round ratio CV          {result.round_ratio_cv:.2%}  (A/A ratio per round)")
    print(f"  worst A/A median error  {result.aa_ratio_error:.2%}")
    print("  rounds  CI half-width")
    for k, w in result.ci_half_width.items():
        mark = " <- recommended" if k == result.recommended_rounds else ""
        print(f"  {k:6d}  {w:.2%}{mark}")
    verdict = "meets" if result.reached else "does NOT meet (even at the most rounds measured)"
    print(
        f"rounds: {result.recommended_rounds} {verdict} the target CI half-width of "
        f"{result.target_ci:.1%} on this machine"
    )
    if args.save:
        saved = calibrated_profile(profile, result)
        atomic_write(Path(args.save), saved.to_yaml())
        print(f"saved {Path(args.save)} (use it as a profile path in a search config)")
    return 0


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
        help="knee | all (the front, re-measured together) | a trial number",
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
