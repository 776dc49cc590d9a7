"""Create or reopen the Optuna study of one (search, profile), with an explicit sampler."""

from __future__ import annotations

import warnings
from pathlib import Path

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from tightfit.config import SamplerSpec, SearchConfig

ATTR_INTERRUPTED = "interrupted"


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
    return optuna.samplers.RandomSampler(seed=seed)


def storage(config: SearchConfig) -> optuna.storages.BaseStorage:
    """The config's ``optuna.storage``: a journal file (default: in the work directory), or a
    database that several machines can reach."""
    where = config.optuna.storage or str(config.workdir_path / "optuna.journal")
    if "://" in where:
        return optuna.storages.RDBStorage(where)
    return JournalStorage(JournalFileBackend(str(Path(where).expanduser())))


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
    """The study of (search, profile); ``workdir`` overrides the config's work directory."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if workdir is not None:
        config = config.model_copy(update={"workdir": str(workdir.resolve())})
    return optuna.load_study(study_name=study_name(config, profile), storage=storage(config))


def recover_interrupted(study: optuna.Study) -> list[int]:
    """Fail the trials a crashed driver left RUNNING and enqueue their params again."""
    stale = study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING))
    recovered = []
    for t in stale:
        if t.state == TrialState.WAITING:
            continue  # still queued: the next ask() takes it
        study._storage.set_trial_user_attr(t._trial_id, ATTR_INTERRUPTED, True)
        study.tell(t.number, state=TrialState.FAIL)
        study.enqueue_trial(t.params, user_attrs={"retry_of": t.number})
        recovered.append(t.number)
    return recovered


def counted_trials(study: optuna.Study) -> tuple[int, int]:
    """(finished trials that count toward n_trials, of which failed); interrupted ones don't count.

    Pre-screened trials (PRUNED: predicted dominated, not measured) count: they were evaluated.
    """
    states = (TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED)
    done = study.get_trials(deepcopy=False, states=states)
    counted = [t for t in done if not t.user_attrs.get(ATTR_INTERRUPTED)]
    return len(counted), sum(1 for t in counted if t.state == TrialState.FAIL)
