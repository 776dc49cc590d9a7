"""The names a search writes and later parts read back: Optuna study and trial attributes, and
MLflow tags. One module, so that a writer (the driver) and its readers (export, the fronts,
latency reuse, the CLI) cannot drift apart.
"""

from __future__ import annotations


class StudyAttr:
    """``study.user_attrs``: once per study (per hardware profile)."""

    BASE_MODEL = "base_model"  # the model callable's weights hash when the study began
    # the baseline's quality objective (accuracy or perplexity); the name predates perplexity
    BASELINE_QUALITY = "baseline_accuracy"
    BASELINE_METRICS = "baseline_metrics"  # the data's extra metrics on the baseline
    BASELINE_SIZE_MB = "baseline_size_mb"
    BASELINE_LATENCY_MS = "baseline_latency_ms"  # the reference every latency is scaled by
    ENVIRONMENT = "environment"  # the machine and runtime the baseline was measured on
    EXPORT = "export"  # the exporter the graphs come from; a dynamo fallback's reason
    AA_CHECK = "aa_check"  # the baseline measured against itself
    INT8_FORMAT = "int8_format"  # int8_format auto: the format chosen
    INT8_FORMATS_MEASURED = "int8_formats_measured"  # ... and what each measured
    INT8_ACTIVATION = "int8_activation_type"  # activation_type auto: the type chosen
    FASTEST_LATENCY_MS = "fastest_latency_ms"  # the most compressed candidate (max_latency_ms)
    SENSITIVITY = "sensitivity"  # the per-unit scan's table
    SENSITIVITY_S = "sensitivity_s"
    N_PLANNED = "n_planned"  # seeds (or a baseline strategy's sweep) enqueued
    REMEASURED_JOINTLY = "remeasured_jointly"  # the end-of-search re-measurement
    RECIPE = "recipe"  # the standard deployment recipe, measured in those rounds


class TrialAttr:
    """``trial.user_attrs``: per trial."""

    CANDIDATE = "candidate"  # the Candidate's JSON: what export rebuilds
    IS_BASELINE = "is_baseline"
    SUMMARY = "summary"  # the candidate's knobs in words
    SEED_KIND = "seed_kind"  # enqueued as a seed: which ("baseline", "uniform", ...)
    RETRY_OF = "retry_of"  # enqueued again after an interruption: the trial it repeats
    REPEAT_OF = "repeat_of"  # the same candidate as this earlier trial: its result, not rebuilt
    INTERRUPTED = "interrupted"  # failed by an interruption (enqueued again), not by itself
    ERROR = "error"
    STAGE = "stage"  # complete, subset, accuracy, prescreened or repeat
    SPEEDUP = "speedup"
    # the quality loss is kept under its objective's loss_name: accuracy_drop (absolute) or
    # perplexity_increase (relative); see tightfit.objectives
    LATENCY = "latency"  # LatencyResult.summary()
    REPORT = "report"  # the kernels' report
    FEATURES = "features"  # latency predictor input
    LAYER_HOST = "layer_host"
    METRICS = "metrics"  # the data's extra metrics
    LATENCY_CACHE = "latency_cache"  # hit or miss
    COMPRESS_NODE_ID = "compress_node_id"
    MEASUREMENT_MOVES = "measurement_moves"  # times the measuring node died under it
    PREDICTED_LATENCY_MS = "predicted_latency_ms"
    PREDICTOR = "predictor"


class Status:
    """How a trial ended: its MLflow run's ``Tag.STATUS``, and why Optuna was told its state.

    A trial that was not measured keeps its reason as ``TrialAttr.STAGE`` too: the same word,
    except ``stopped``, whose stage says where quality ruled it out (``subset``, ``accuracy``).
    """

    COMPLETE = "complete"  # measured (Optuna COMPLETE)
    FAILED = "failed"  # Optuna FAIL
    STOPPED = "stopped"  # staged evaluation: quality already rules it out (PRUNED)
    PRESCREENED = "prescreened"  # predicted dominated: not worth a measurement (PRUNED)
    REPEAT = "repeat"  # an earlier trial's candidate: not built or measured again (PRUNED)
    #: the statuses whose MLflow run ends FINISHED (every one but a failure)
    FINISHED = frozenset({COMPLETE, STOPPED, PRESCREENED, REPEAT})


class Tag:
    """MLflow tags on a search's runs."""

    SEARCH = "tightfit.search"
    PROFILE = "tightfit.profile"
    TRIAL = "tightfit.trial"
    KIND = "tightfit.kind"  # trial or summary
    # running, complete, failed, stopped, prescreened, repeat, interrupted
    STATUS = "tightfit.status"
    ERROR = "tightfit.error"
    PARETO = "tightfit.pareto"
    FEASIBLE = "tightfit.feasible"
    STAGE = "tightfit.stage"
    LATENCY_CACHE = "tightfit.latency_cache"
    SIGNATURE = "tightfit.signature"
    NODE_ID = "tightfit.node_id"  # where it was measured
    COMPRESS_NODE_ID = "tightfit.compress_node_id"
    MEASURED_UNDER_LOAD = "tightfit.measured_under_load"
    REPEAT_OF = "tightfit.repeat_of"  # the trial whose candidate this one repeats
    RECONCILED = "tightfit.reconciled"  # written from the study after the driver had stopped
    ENVIRONMENT_PREFIX = "env."
    CONFIG = "tightfit.config"  # on a Ray Job (tightfit submit): the config file it runs
