"""The commands on this machine's searches: search, pareto, export, ui, profiles."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from tightfit._secrets import RedactingFilter
from tightfit.cli._text import _aa_text, _console, _front_table, _ratio_text, _recipe_text
from tightfit.exceptions import TightfitError
from tightfit.keys import StudyAttr

log = logging.getLogger("tightfit")


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
    quality = config.quality.name
    for p in outcome.profiles:
        console.print(
            _front_table(p.front, f"{config.name} on {p.profile}", list(config.objectives))
        )
        if p.aa_check:
            console.print(_aa_text(p.aa_check), soft_wrap=True)
        if p.study.user_attrs.get(StudyAttr.RECIPE):
            console.print(_recipe_text(p.study), soft_wrap=True)
        console.print(
            f"baseline on {p.profile}: {quality} {p.baseline[quality]:.4f}, "
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
        f"{results[0].quality if results else 'accuracy'} (logged → now)",
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
            f"{r.logged[r.quality]:.4f} → {r.measured[r.quality]:.4f}",
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


def cmd_ui(args: argparse.Namespace) -> int:
    import os

    from tightfit.runs import ui

    workdir = Path(args.workdir).resolve()
    remote = ui.remote_url(workdir)
    if remote:
        print(f"this search logs to a tracking server: open {remote}")
        return 0
    if not ui.is_loopback(args.host):
        print(
            f"tightfit: warning: --host {args.host} serves the MLflow UI beyond this machine, and "
            "it has no login: anyone who reaches the port can read and change every run. "
            "Prefer an SSH tunnel (ssh -L 5000:127.0.0.1:5000 HOST) to the default 127.0.0.1",
            file=sys.stderr,
        )
    server = ui.server_command(workdir, args.host, args.port)
    print(f"MLflow UI for '{server.search}' at {server.url}  (Ctrl-C to stop)", flush=True)
    if args.open:
        ui.open_when_up(server)
    # the server replaces this process: signals reach it
    os.execve(server.command[0], server.command, {**os.environ, **server.env})
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

    from tightfit.config import load_config
    from tightfit.evaluators.calibrate import calibrate, calibrated_profile
    from tightfit.evaluators.runtimes import require_runtime
    from tightfit.hardware_profiles import get_profile
    from tightfit.workdir import atomic_write
    from tightfit.workspace import calibration_model

    profile = get_profile(args.name)
    require_runtime(profile)
    with tempfile.TemporaryDirectory(prefix="tightfit-calibrate-") as tmp:
        config = load_config(args.config) if args.config else None
        model, feed, what = calibration_model(profile, config, Path(tmp))
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
