"""The sections of a search config: model and data, the space, constraints, the sampler,
latency, staging, sensitivity, recovery, and where Ray, MLflow and Optuna live."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator, Field, field_validator, model_validator

from tightfit._records import Record
from tightfit._secrets import has_secret, redact
from tightfit.objectives import Objective

__all__ = [
    "CallableSpec",
    "Constraints",
    "DataSpec",
    "DistillSpec",
    "LatencySpec",
    "LowRankSpace",
    "MlflowSpec",
    "ModelSpec",
    "OptunaSpec",
    "PruneSpace",
    "QuantizeSpace",
    "RaySpec",
    "ReconstructSpec",
    "RecoverySpec",
    "SamplerSpec",
    "SeedsSpec",
    "SensitivitySpec",
    "SpaceSpec",
    "StagedSpec",
    "callable_reference",
    "loss_excess",
]


def callable_reference(fn: Any) -> str:
    """``module:qualname`` of an importable function or class, the form Ray workers import.

    A lambda, a function defined inside another, or one defined in ``__main__`` (the script
    being run) cannot be imported by name on a worker: each gets a message saying what to do.
    """
    module, qual = getattr(fn, "__module__", None), getattr(fn, "__qualname__", None)
    if not module or not qual:
        raise ValueError(
            f"{fn!r} is not a function or class; pass one (its keyword arguments go in 'kwargs')"
        )
    if "<lambda>" in qual or "<locals>" in qual:
        raise ValueError(
            f"{qual} is a lambda or is defined inside another function: workers import the "
            "callable by name, so define it at the top level of a module"
        )
    if module == "__main__":
        raise ValueError(
            f"{qual} is defined in __main__ (the script being run), which workers cannot "
            f"import: move it to a module (e.g. models.py) and import it from there"
        )
    found: Any = importlib.import_module(module)
    for part in qual.split("."):
        found = getattr(found, part, None)
    if found is not fn:
        raise ValueError(f"{module}:{qual} does not import as the callable given")
    return f"{module}:{qual}"


def _to_reference(v: Any) -> Any:
    return v if isinstance(v, str) or not callable(v) else callable_reference(v)


def _check_reference(v: str, allow_example: bool) -> str:
    module, sep, attr = v.partition(":")
    if not sep and allow_example:
        return v  # a built-in example's name (checked when it is loaded)
    if not module or not attr or not all(p.isidentifier() for p in attr.split(".")):
        what = "'module:callable'" + (" or a built-in example name" if allow_example else "")
        raise ValueError(f"must be {what}, got {v!r}")
    return v


#: ``module:callable`` or a built-in example's name; from Python, the importable function.
CallableRef = Annotated[
    str,
    BeforeValidator(_to_reference),
    AfterValidator(lambda v: _check_reference(v, allow_example=True)),
    Field(min_length=1),
]
#: ``module:callable``; from Python, the importable function.
FunctionRef = Annotated[
    str,
    BeforeValidator(_to_reference),
    AfterValidator(lambda v: _check_reference(v, allow_example=False)),
]


class CallableSpec(Record):
    """``module:callable`` (or a built-in example name) and keyword arguments for it.

    Also given as the string alone, or (from Python) as the importable function itself.
    """

    callable: CallableRef
    kwargs: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, v: Any) -> Any:
        return {"callable": v} if isinstance(v, str) or callable(v) else v


class DataSpec(CallableSpec):
    """The data callable, and how batches are read when it returns loaders.

    The callable returns ``calibration``, ``validation`` (and ``targets``), each as arrays or a
    mapping of input name to array, or as a torch ``DataLoader`` or any iterable of batches.
    A batch is ``(inputs, targets)``, a mapping with a ``labels`` (or ``label``) entry, or
    whatever ``transform`` turns into one of those (as ``nncf.Dataset(loader, transform_fn)``).
    """

    transform: FunctionRef | None = Field(
        None,
        description="module:callable applied to every batch of a loader; returns (inputs, "
        "targets) or inputs alone (calibration needs no targets)",
    )
    calibration_samples: int = Field(
        512, ge=1, description="samples read from a calibration loader (arrays are taken whole)"
    )
    validation_samples: int | None = Field(
        None, ge=1, description="samples read from a validation loader (default: all of it)"
    )


MODEL_SOURCES = ("callable", "hf", "timm", "torchvision")


class ModelSpec(Record):
    """Where the model comes from: exactly one of ``callable`` (``module:callable`` or a built-in
    example), ``hf`` (a Hugging Face model folder, as ``save_pretrained`` writes it), ``timm``
    or ``torchvision`` (an architecture name; weights from ``checkpoint``). ``kwargs`` go to
    the callable, ``from_pretrained``, ``timm.create_model`` or ``torchvision.models.get_model``.

    Nothing is downloaded: a Hugging Face folder is read with ``local_files_only``, and timm or
    torchvision weights come from a local ``checkpoint`` file (a state dict).
    """

    callable: CallableRef | None = None
    hf: str | None = Field(
        None, description="a Hugging Face model folder (config.json and weights)"
    )
    timm: str | None = Field(None, description="a timm architecture name (needs timm installed)")
    torchvision: str | None = Field(
        None, description="a torchvision.models name (needs torchvision installed)"
    )
    kwargs: dict[str, Any] = Field(default_factory=dict)
    checkpoint: str | None = Field(
        None,
        description="a state dict file (.pt, .pth, .bin or .safetensors) loaded into the model; "
        "not with hf (the folder holds the weights)",
    )
    hf_class: str | None = Field(
        None,
        description="the transformers class that loads an hf folder, e.g. "
        "AutoModelForSequenceClassification (default: the folder's config.architectures[0])",
    )
    output: str | None = Field(
        None,
        description="which output of a Hugging Face model is the model's output (default: "
        "logits if it has them, else its first output, e.g. last_hidden_state)",
    )
    ignore: list[str] = Field(
        default_factory=list,
        description="module paths never compressed (the classifier is excluded from pruning anyway)",
    )

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, v: Any) -> Any:
        return {"callable": v} if isinstance(v, str) or callable(v) else v

    @model_validator(mode="after")
    def _one_source(self) -> ModelSpec:
        given = [s for s in MODEL_SOURCES if getattr(self, s)]
        if len(given) != 1:
            raise ValueError(
                f"give exactly one of {', '.join(MODEL_SOURCES)}; got "
                f"{', '.join(given) if given else 'none'}"
            )
        if self.checkpoint and self.hf:
            raise ValueError(
                "checkpoint: an hf folder holds its own weights; drop checkpoint, or save the "
                "weights into the folder with save_pretrained"
            )
        if (self.hf_class or self.output) and not self.hf:
            raise ValueError("hf_class and output apply to hf models only; remove them")
        return self

    @property
    def source(self) -> str:
        """``callable``, ``hf``, ``timm`` or ``torchvision``."""
        return next(s for s in MODEL_SOURCES if getattr(self, s))

    def describe(self) -> str:
        """How messages name the model: ``model 'hf:./bert-tiny'``."""
        value = getattr(self, self.source)
        return f"model '{value}'" if self.source == "callable" else f"model '{self.source}:{value}'"


class PruneSpace(Record):
    enabled: bool = True
    ratios: list[float] = Field(default_factory=lambda: [0.0, 0.25, 0.375, 0.5, 0.625])
    importance: Literal["magnitude", "activation"] = Field(
        "magnitude",
        description="how channels are ranked for removal: magnitude (L2 norm of the group's "
        "weights, no data) or activation (each channel's expected squared contribution to the "
        "layers it feeds: their weight column's squared norm times the channel's mean square "
        "on calibration data; one forward pass per candidate)",
    )
    ignore: list[str] = Field(
        default_factory=list,
        description="module paths pruning leaves alone and whose channels it keeps (e.g. the "
        "layers that write a residual stream), while quantization and low rank still reach "
        "them; model.ignore leaves a module out of every kernel",
    )

    @field_validator("ratios")
    @classmethod
    def _ratios(cls, v: list[float]) -> list[float]:
        for i, r in enumerate(v):
            if not 0.0 <= r < 1.0:
                raise ValueError(f"[{i}] must be in [0, 1), got {r}")
        if 0.0 not in v:
            v = [0.0, *v]  # "leave this group alone" is always a choice
        return sorted(set(v))


class LowRankSpace(Record):
    enabled: bool = True
    rank_fractions: list[float] = Field(
        default_factory=lambda: [0.25, 0.5, 0.75],
        description="ranks as fractions of the layer's break-even rank; 'not factorized' is always a choice",
    )
    min_rank: int = Field(8, ge=1)

    @field_validator("rank_fractions")
    @classmethod
    def _fractions(cls, v: list[float]) -> list[float]:
        for i, f in enumerate(v):
            if not 0.0 < f < 1.0:
                raise ValueError(
                    f"[{i}] must be in (0, 1) (a fraction of the break-even rank), got {f}"
                )
        return sorted(set(v))


class QuantizeSpace(Record):
    enabled: bool = True
    bits: list[Literal[32, 8, 4]] = [32, 8]  # pydantic copies defaults

    @field_validator("bits")
    @classmethod
    def _bits(cls, v: list[int]) -> list[int]:
        if 32 not in v:
            v = [32, *v]
        return sorted(set(v), reverse=True)


class SpaceSpec(Record):
    prune: PruneSpace = Field(default_factory=PruneSpace)
    lowrank: LowRankSpace = Field(default_factory=LowRankSpace)
    quantize: QuantizeSpace = Field(default_factory=QuantizeSpace)
    kernels: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="settings of kernels registered beyond the three above, by kernel name "
        "(each kernel validates its own; an unknown name is refused when the space is found)",
    )


def loss_excess(quality: Objective, baseline: float, value: float, limit: float) -> float:
    """How far the quality loss of ``value`` against ``baseline`` exceeds ``limit`` (> 0:
    infeasible): the accuracy drop, or the relative perplexity increase.

    Rounded to 1e-9: accuracies are float sums, and 0.747 - 0.737 is 0.01000000000000001 in
    binary, which would make a drop of exactly the limit infeasible.
    """
    return round(quality.loss(baseline, value) - limit, 9)


class Constraints(Record):
    """Feasibility: the quality objective's loss against the baseline (the constraint of the
    search's quality objective applies) and, optionally, a latency ceiling."""

    max_accuracy_drop: float = Field(
        0.01, ge=0.0, le=1.0, description="objective accuracy: vs the baseline, absolute"
    )
    max_perplexity_increase: float = Field(
        0.05,
        ge=0.0,
        description="objective perplexity: vs the baseline, relative (0.05 = at most +5%)",
    )
    max_latency_ms: float | None = Field(None, gt=0.0)

    def limit(self, quality: Objective) -> float:
        """The cap on ``quality``'s loss."""
        return float(getattr(self, quality.constraint))


class SamplerSpec(Record):
    """Which Optuna sampler proposes trials, with every setting explicit (and the search's seed).

    - ``tpe``: multivariate TPE with the constant liar (trials in flight count as bad), so
      concurrent trials do not all land on one spot.
    - ``nsga2``: NSGA-II, a genetic algorithm; good with large budgets.
    - ``random``: uniform random levels; the honest neutral baseline.
    - ``qmc``: scrambled quasi-Monte Carlo (Sobol or Halton) points over the unit levels: spreads
      a small budget more evenly than random.
    - ``mutate``: EvoPress-style level switching: a child of a trial on the feasible front with
      1 to ``max_switches`` unit levels moved one step (``tightfit.samplers``); for spaces too
      large for random points to meet the quality constraint.
    """

    name: Literal["tpe", "nsga2", "random", "qmc", "mutate"] = "tpe"
    n_startup_trials: int = Field(10, ge=0, description="TPE: random trials before the model")
    n_ei_candidates: int = Field(24, ge=1, description="TPE: candidates scored per proposal")
    population_size: int = Field(20, ge=2, description="NSGA-II population")
    crossover_prob: float = Field(0.9, ge=0.0, le=1.0, description="NSGA-II")
    qmc_type: Literal["sobol", "halton"] = Field("sobol", description="QMC sequence")
    max_switches: int = Field(
        3, ge=1, description="mutate: the most unit levels a child moves from its parent's"
    )


class LatencySpec(Record):
    """How latency measurements are reused and pre-screened."""

    cache: bool = Field(
        True, description="reuse measurements of the same architecture across trials and searches"
    )
    cache_dir: str | None = Field(
        None, description="None: $TIGHTFIT_CACHE_DIR or ~/.cache/tightfit (shared by searches)"
    )

    @field_validator("cache_dir")
    @classmethod
    def _cache_dir(cls, v: str | None) -> str | None:
        return str(Path(v).expanduser()) if v else v

    prescreen: bool = Field(
        True, description="skip measuring candidates the latency predictor says are dominated"
    )
    layer_table: bool = Field(
        False,
        description="time each layer shape once, alone, and predict from the sum (ONNX Runtime "
        "CPU profiles); off: the graph-count fit, which ranked the digits search's measured "
        "candidates better (layer times taken beside other compression work are noisy)",
    )
    prescreen_after: int = Field(
        12, ge=3, description="measured trials before the predictor is trusted to skip any"
    )
    remeasure: Literal["front", "measured", "off"] = Field(
        "front",
        description="at the end of a search, measure these candidates again, together, in the "
        "same interleaved rounds (front.csv's latency_ms_joint): close candidates measured one "
        "at a time, minutes apart, swap places with the machine's state. 'measured': every "
        "compressed candidate the search measured, which also ranks the latency predictor "
        "against a repeatable measurement (predictor_spearman_joint)",
    )
    remeasure_max: int = Field(
        48, ge=2, description="at most this many candidates re-measured together (front first)"
    )
    recipe: bool = Field(
        True,
        description="at the end of a search, build the standard deployment recipe (fp32 fused, "
        "uniform dynamic and static int8 on CPUs, fp16 on GPUs) and measure it in the same "
        "rounds as the front (summary: recipe_best_speedup, speedup_over_recipe)",
    )
    prescreen_margin: float = Field(
        0.15,
        ge=0.0,
        lt=1.0,
        description="skip only if still dominated with the predicted latency this much lower",
    )


class SeedsSpec(Record):
    """Baseline candidates enqueued before the sampler's first trial (after the baseline)."""

    recipe: bool = Field(
        True,
        description="the standard deployment recipe's candidates (uniform int8; int4 too for a "
        "generation profile), first after the baseline",
    )
    uniform: int = Field(4, ge=0, description="uniform compression: one level for every unit")
    global_magnitude: int = Field(
        2, ge=0, description="global magnitude pruning, spread over global ratios"
    )
    depth: int = Field(
        2,
        ge=0,
        description="where the space drops blocks (the depth kernel): evenly spaced blocks "
        "dropped, a sixth then a third of each stack, with int8 where the space has it",
    )


class DistillSpec(Record):
    """A short distillation of each pruned or factorized candidate from the uncompressed model.

    Label-free: the student learns the baseline's outputs on the calibration inputs (KL on
    temperature-softened class scores for classifier outputs, mean squared error otherwise,
    e.g. for L2-normalised embeddings).
    Deterministic for a given candidate, so export replays it exactly. Off by default: it costs
    ``steps`` forward/backward passes per candidate.
    """

    enabled: bool = False
    steps: int = Field(100, ge=1, description="optimizer steps per candidate (its budget)")
    batch_size: int = Field(32, ge=1)
    max_samples: int = Field(1024, ge=1, description="calibration inputs used (teacher outputs)")
    lr: float = Field(1e-4, gt=0.0, description="Adam learning rate")
    temperature: float = Field(2.0, gt=0.0, description="softening of class scores (KL loss)")
    loss: Literal["auto", "kl", "mse"] = Field(
        "auto",
        description="auto: KL for class scores (2-D outputs, more than one column, rows not "
        "L2-normalised), else MSE (embeddings, regression)",
    )
    hidden: list[str] = Field(
        default_factory=list,
        description="module paths whose outputs the student matches too (mean squared error, "
        "weighted by hidden_weight), e.g. a transformer's encoder: a student with layers "
        "dropped then learns every token's state, not only the pooled output (TinyBERT-style). "
        "Pick modules whose output shape no candidate changes",
    )
    hidden_weight: float = Field(1.0, gt=0.0, description="weight of the hidden-state loss")


class ReconstructSpec(Record):
    """Least-squares re-fit of the layers that lost input channels to pruning.

    After a group is pruned, each layer that consumed its channels (a 1x1 convolution or a
    Linear whose outputs are kept) is re-fitted, in forward order, so that on calibration inputs
    it reproduces the uncompressed model's output at that layer from the channels that remain
    (He et al. 2017, "Channel pruning"; ThiNet). No labels and no training: one forward pass of
    each model over ``max_samples`` calibration inputs. Off by default; deterministic, so export
    replays it exactly.
    """

    enabled: bool = False
    max_samples: int = Field(64, ge=1, description="calibration inputs used")
    positions: int = Field(
        64, ge=1, description="spatial positions sampled per image and layer (all if fewer)"
    )
    ridge: float = Field(
        1e-4, ge=0.0, description="ridge penalty, relative to the mean diagonal of X^T X"
    )


class RecoverySpec(Record):
    """What repairs a compressed model before it is scored (and again, the same, at export)."""

    reconstruct: ReconstructSpec = Field(default_factory=ReconstructSpec)

    batchnorm: bool = Field(
        True,
        description="re-estimate BatchNorm statistics on the calibration data after pruning or "
        "factorization (one forward pass, no labels); turn it off when the calibration data "
        "is not representative of what the model was trained on (its statistics would replace "
        "the trained ones)",
    )
    bias_correction: Literal["auto", True, False] = Field(
        "auto",
        description="subtract the mean output shift that weight quantization causes from each "
        "quantized layer's bias; auto: only for coarse quantization (per-tensor int8, 4-bit) "
        "and only when it lowers the candidate's output error on calibration data",
    )
    distill: DistillSpec = Field(default_factory=DistillSpec)


class SensitivitySpec(Record):
    """A one-unit-at-a-time accuracy scan before the search (see tightfit.search.sensitivity)."""

    enabled: bool = True
    shrink: bool = Field(True, description="drop levels that alone break the accuracy constraint")
    seeds: int = Field(3, ge=0, description="allocations from the scan enqueued as seeds")


class StagedSpec(Record):
    """Multi-fidelity evaluation inside each trial (Optuna's pruners do not serve
    multi-objective studies): cheap stages first, the costly ones only for candidates that may
    still reach the front."""

    enabled: bool = True
    subset_fraction: float = Field(
        0.25, gt=0.0, le=1.0, description="share of the validation samples scored first"
    )
    min_subset: int = Field(100, ge=10, description="at least this many samples in that subset")
    z: float = Field(
        2.0,
        ge=0.0,
        description="stop after the subset only if its accuracy drop exceeds the limit by this "
        "many standard errors",
    )
    measure_infeasible: bool = Field(
        False,
        description="measure latency even when the full accuracy breaks the constraint "
        "(such a candidate can never be on the front)",
    )


def _no_credentials(value: str | None, variables: str) -> str | None:
    if value is not None and has_secret(value):
        raise ValueError(
            f"must not hold credentials (got {redact(value)!r}); give them through {variables} "
            "so they never reach configs, logs or MLflow"
        )
    return value


class RaySpec(Record):
    address: str | None = Field(None, description="None: start a local Ray in the driver")
    num_cpus: int | None = Field(None, ge=1, description="local Ray CPUs; None: all cores")
    ship: bool = Field(
        True,
        description="with an address: send the current folder (your model and data code, as "
        "submit uploads it) and this tightfit package to the cluster's workers",
    )
    runtime_env: dict[str, Any] = Field(
        default_factory=dict,
        description="with an address: Ray runtime_env entries merged over what ship sends "
        "(e.g. pip, env_vars, excludes)",
    )

    @field_validator("address")
    @classmethod
    def _address(cls, v: str | None) -> str | None:
        return _no_credentials(v, "RAY_AUTH_TOKEN or your cluster's auth")


class MlflowSpec(Record):
    tracking_uri: str | None = Field(
        None, description="None: sqlite:///<workdir>/mlflow.db; or a tracking server URL"
    )

    @field_validator("tracking_uri")
    @classmethod
    def _uri(cls, v: str | None) -> str | None:
        return _no_credentials(
            v, "MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD or MLFLOW_TRACKING_TOKEN"
        )


class OptunaSpec(Record):
    storage: str | None = Field(
        None,
        description="None: a journal file in the work directory; a path ending in .journal; "
        "or a database URL (sqlite:///..., postgresql://..., mysql://...)",
    )

    @field_validator("storage")
    @classmethod
    def _storage(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if "://" in v:
            scheme = v.split("://", 1)[0].split("+", 1)[0]
            if scheme not in ("sqlite", "postgresql", "mysql"):
                raise ValueError(
                    f"{v!r}: a database URL must be sqlite://, postgresql:// or mysql://; "
                    "or give a path ending in .journal"
                )
        elif not v.endswith(".journal"):
            raise ValueError(f"{v!r}: give a path ending in .journal, or a database URL")
        return _no_credentials(v, "PGPASSWORD / ~/.pgpass (PostgreSQL) or ~/.my.cnf (MySQL)")
