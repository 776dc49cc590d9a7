"""Create or reopen the Optuna study of one (search, profile), with an explicit sampler."""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import warnings
from pathlib import Path

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from tightfit._optuna_private import set_running_trial_attr
from tightfit.config import SamplerSpec, SearchConfig
from tightfit.exceptions import WorkdirError
from tightfit.hardware_profiles import HardwareProfile
from tightfit.keys import StudyAttr, TrialAttr
from tightfit.samplers import LevelSwitchSampler

log = logging.getLogger(__name__)


def make_sampler(spec: SamplerSpec, seed: int) -> optuna.samplers.BaseSampler:
    """The sampler ``spec`` names, every setting explicit (Optuna 4.x and 5.x defaults differ).

    Trial constraints (``Trial.set_constraint``) reach every sampler without a
    ``constraints_func``: TPE and NSGA-II rank infeasible trials below feasible ones.
    """
    if spec.name == "tpe":
        return optuna.samplers.TPESampler(
            seed=seed,
            multivariate=True,
            group=False,
            constant_liar=True,
            n_startup_trials=spec.n_startup_trials,
            n_ei_candidates=spec.n_ei_candidates,
        )
    if spec.name == "nsga2":
        return optuna.samplers.NSGAIISampler(
            seed=seed, population_size=spec.population_size, crossover_prob=spec.crossover_prob
        )
    if spec.name == "qmc":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.QMCSampler(
                qmc_type=spec.qmc_type,
                scramble=True,
                seed=seed,
                independent_sampler=optuna.samplers.RandomSampler(seed=seed),
                warn_independent_sampling=False,
                warn_asynchronous_seeding=False,
            )
    if spec.name == "mutate":
        return LevelSwitchSampler(seed=seed, max_switches=spec.max_switches)
    return optuna.samplers.RandomSampler(seed=seed)


def journal_path(config: SearchConfig) -> Path | None:
    """The journal file of the config's study (None: the study is in a database)."""
    where = config.optuna.storage or str(config.workdir_path / "optuna.journal")
    return None if "://" in where else Path(where).expanduser()


def storage(config: SearchConfig, read_only: bool = False) -> optuna.storages.BaseStorage:
    """The config's ``optuna.storage``: a journal file (default: in the work directory), or a
    database that several machines can reach.

    A journal is checked first (:func:`check_journal`): a search repairs a torn last record;
    ``read_only`` (pareto, export) never writes, and a journal that does not exist is an error
    there, not an empty file created.
    """
    journal = journal_path(config)
    if journal is None:
        assert config.optuna.storage is not None
        return optuna.storages.RDBStorage(config.optuna.storage)
    if read_only and not journal.exists():
        raise WorkdirError(
            f"search '{config.name}' has no study yet ({journal} does not exist); run "
            "'tightfit search' first"
        )
    check_journal(journal, repair=not read_only)
    return JournalStorage(JournalFileBackend(str(journal)))


def check_journal(path: Path, repair: bool) -> None:
    """Refuse a corrupt journal; repair a torn last record (``repair``) with a backup.

    Optuna appends one JSON record per line. A write cut short (a full disk, a crash in the
    middle of a write) leaves a last line without its newline: Optuna skips it when reading,
    but the next append would glue a record onto it and make the file unreadable. Such a tail
    is completed (a whole record whose newline is missing) or cut off (a partial record, which
    Optuna never applied), after copying the file to ``<name>.torn-<time>.bak``. A bad record
    before the last one is not repaired: the journal is refused, since the study cannot be
    rebuilt without it.
    """
    if not path.exists():
        return
    raw = path.read_bytes()
    if not raw:
        return
    lines = raw.split(b"\n")
    for number, line in enumerate(lines[:-1], start=1):
        try:
            json.loads(line)
        except ValueError:
            raise WorkdirError(
                f"the Optuna journal {path} is corrupt at line {number} of {len(lines) - 1}; "
                "restore it from a backup, or start the search afresh in a new workdir"
            ) from None
    tail = lines[-1]
    if not tail:  # ends with a newline: whole
        return
    try:
        json.loads(tail)
        whole = True
    except ValueError:
        whole = False
    if not repair:
        log.warning("the Optuna journal %s ends in a torn record; a search run repairs it", path)
        return
    backup = path.with_name(f"{path.name}.torn-{time.strftime('%Y%m%d-%H%M%S')}.bak")
    shutil.copy2(path, backup)
    try:
        if whole:  # the record was written whole; only its newline is missing
            with open(path, "ab") as f:
                f.write(b"\n")
        else:  # a partial record, never applied by Optuna: cut it off
            os.truncate(path, len(raw) - len(tail))
    except OSError as e:
        raise WorkdirError(
            f"cannot repair the Optuna journal {path} ({e.strerror}); free some space and rerun"
        ) from None
    log.warning(
        "the Optuna journal %s ended in a torn record (%d bytes, %s); %s, backup in %s",
        path,
        len(tail),
        "a whole record without its newline" if whole else "a partial record",
        "its newline added" if whole else "cut off",
        backup,
    )


def study_name(config: SearchConfig, profile: str) -> str:
    return f"{config.name}:{profile}"


def open_study(config: SearchConfig, profile: str) -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        storage=storage(config),
        study_name=study_name(config, profile),
        directions=config.directions,  # type: ignore[arg-type]
        sampler=make_sampler(config.sampler, config.seed),
        load_if_exists=True,
    )
    if not study.metric_names:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(list(config.objectives))
    return study


def load_study(config: SearchConfig, profile: str, workdir: Path | None = None) -> optuna.Study:
    """The study of (search, profile), read only; ``workdir`` overrides the config's work
    directory. A study that does not exist is a WorkdirError naming the ones that do."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if workdir is not None:
        config = config.model_copy(update={"workdir": str(workdir.resolve())})
    where = storage(config, read_only=True)
    try:
        return optuna.load_study(study_name=study_name(config, profile), storage=where)
    except KeyError:
        started = [
            s.study_name.split(":", 1)[-1]
            for s in optuna.get_all_study_summaries(where, include_best_trial=False)
        ]
        raise WorkdirError(
            f"search '{config.name}' has no study for profile '{profile}' "
            f"(studies: {', '.join(started) or 'none yet'}); "
            + (
                f"choose one of its profiles: {', '.join(started)}"
                if started
                else "run 'tightfit search' first"
            )
        ) from None


def is_feasible(trial: optuna.trial.FrozenTrial) -> bool:
    """A trial with objective values whose constraints all hold (``Trial.set_constraint``)."""
    c = trial.constraints
    values = [] if c is None else list(c.values()) if isinstance(c, dict) else list(c)
    return trial.values is not None and all(v <= 0 for v in values)


def profile_as_searched(profile: HardwareProfile, study: optuna.Study) -> HardwareProfile:
    """``profile`` as the study's trials were built: with ``int8_format: auto`` and
    ``activation_type: auto``, what the search measured and chose (a study begun before auto
    kept static, QUInt8)."""
    q = profile.quantization
    if q.int8_format != "auto" and q.activation_type != "auto":
        return profile
    attrs = study.user_attrs
    fmt = attrs.get(StudyAttr.INT8_FORMAT, "static") if q.int8_format == "auto" else q.int8_format
    activations = attrs.get(StudyAttr.INT8_ACTIVATION, q.activations)
    return profile.with_int8_format(fmt, activations)


def recover_interrupted(study: optuna.Study) -> list[int]:
    """Fail the trials a crashed driver left RUNNING and enqueue their params again."""
    stale = study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING))
    recovered = []
    for t in stale:
        if t.state == TrialState.WAITING:
            continue  # still queued: the next ask() takes it
        set_running_trial_attr(study, t, TrialAttr.INTERRUPTED, True)
        study.tell(t.number, state=TrialState.FAIL)
        study.enqueue_trial(t.params, user_attrs={TrialAttr.RETRY_OF: t.number})
        recovered.append(t.number)
    return recovered


def counted_trials(study: optuna.Study) -> tuple[int, int]:
    """(finished trials that count toward n_trials, of which failed); interrupted ones don't count,
    nor do repeats (an earlier trial's candidate, its result told again).

    Pre-screened trials (PRUNED: predicted dominated, not measured) count: they were evaluated.
    """
    states = (TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED)
    done = study.get_trials(deepcopy=False, states=states)
    counted = [
        t
        for t in done
        if not t.user_attrs.get(TrialAttr.INTERRUPTED) and TrialAttr.REPEAT_OF not in t.user_attrs
    ]
    return len(counted), sum(1 for t in counted if t.state == TrialState.FAIL)
