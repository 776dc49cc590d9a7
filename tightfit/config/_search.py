"""SearchConfig, the whole search, and the ways in: a YAML file, a mapping, a record."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from tightfit import objectives
from tightfit._naming import unknown_name_message
from tightfit._records import Record, describe_validation_error
from tightfit._secrets import secret_keys
from tightfit.config._parts import (
    Constraints,
    DataSpec,
    LatencySpec,
    MlflowSpec,
    ModelSpec,
    OptunaSpec,
    RaySpec,
    RecoverySpec,
    SamplerSpec,
    SeedsSpec,
    SensitivitySpec,
    SpaceSpec,
    StagedSpec,
    loss_excess,
)
from tightfit.exceptions import ConfigError
from tightfit.hardware_profiles import HardwareProfile, get_profile
from tightfit.hardware_profiles._profile import _yaml_where
from tightfit.objectives import Objective


class SearchConfig(Record):
    """A whole search, as validated from its YAML file."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", max_length=100)
    model: ModelSpec
    data: DataSpec
    space: SpaceSpec = Field(default_factory=SpaceSpec)
    objectives: list[str] = Field(
        default_factory=lambda: ["accuracy", "latency_ms", "size_mb"],
        description="what the front trades off: names of objectives.OBJECTIVES (each knows "
        "which way is better)",
    )
    constraints: Constraints = Field(default_factory=Constraints)
    profiles: list[str] = Field(default_factory=lambda: ["cpu-ort"], min_length=1)
    sampler: SamplerSpec = Field(default_factory=SamplerSpec)
    latency: LatencySpec = Field(default_factory=LatencySpec)
    staged: StagedSpec = Field(default_factory=StagedSpec)
    sensitivity: SensitivitySpec = Field(default_factory=SensitivitySpec)
    recovery: RecoverySpec = Field(default_factory=RecoverySpec)
    n_trials: int = Field(40, ge=1, le=100_000)
    seed: int = 0
    concurrency: int = Field(
        2, ge=1, description="evaluations in flight at once, over all profiles of the search"
    )
    profile_concurrency: dict[str, Annotated[int, Field(ge=1)]] = Field(
        default_factory=dict,
        description="at most this many of them for the named profiles (default: concurrency)",
    )
    trial_timeout_s: float = Field(600.0, gt=0.0)
    strategy: Literal["search", "recipe", "uniform", "global_magnitude"] = Field(
        "search",
        description="search: the sampler proposes trials; recipe / uniform / global_magnitude: "
        "that baseline alone (its candidates in order, a sweep's shuffled by the seed, at most "
        "n_trials); recipe: the standard deployment recipe's candidates (uniform int8, int4 "
        "for a generation profile) after the baseline",
    )
    seeds: SeedsSpec = Field(default_factory=SeedsSpec)
    workdir: str | None = Field(None, description="default: runs/<name>/")
    ray: RaySpec = Field(default_factory=RaySpec)
    mlflow: MlflowSpec = Field(default_factory=MlflowSpec)
    optuna: OptunaSpec = Field(default_factory=OptunaSpec)

    @field_validator("objectives")
    @classmethod
    def _objectives(cls, v: list[str]) -> list[str]:
        for i, name in enumerate(v):
            if name not in objectives.OBJECTIVES:
                raise ValueError(
                    f"[{i}] {unknown_name_message('objective', name, objectives.OBJECTIVES)}"
                )
        if len(set(v)) != len(v):
            raise ValueError(f"has duplicates: {v}")
        qualities = [n for n in v if n in objectives.QUALITIES]
        others = [n for n in objectives.OBJECTIVES if n not in objectives.QUALITIES]
        if len(qualities) != 1 or len(v) < 2:
            raise ValueError(
                f"must include one quality objective ({' or '.join(objectives.QUALITIES)}: the "
                f"data's metric, higher or lower is better) and at least one of "
                f"{', '.join(others)}, got {v}"
            )
        return v

    @field_validator("profiles")
    @classmethod
    def _profiles(cls, v: list[str]) -> list[str]:
        seen: set[str] = set()
        for i, name in enumerate(v):
            if name in seen:
                raise ValueError(
                    f"[{i}] {name!r} is listed twice; list each profile once (a profile's "
                    "trials share one study)"
                )
            seen.add(name)
        return v

    @field_validator("workdir")
    @classmethod
    def _workdir(cls, v: str | None) -> str | None:
        return str(Path(v).expanduser()) if v else v

    @model_validator(mode="after")
    def _no_secrets(self) -> SearchConfig:
        """Credentials anywhere in the config (model and data kwargs included) would be
        written to search.json, the MLflow params and the manifests."""
        for where in secret_keys(self.model_dump(mode="json")):
            raise ValueError(
                f"{where} holds a credential; a config is written to search.json, MLflow and "
                "every manifest: read it in your model or data callable from an environment "
                "variable (or a file outside the config) instead"
            )
        return self

    @model_validator(mode="after")
    def _something_to_search(self) -> SearchConfig:
        s = self.space
        if not (s.prune.enabled or s.lowrank.enabled or s.quantize.enabled or s.kernels):
            raise ValueError("space: every kernel is disabled; enable prune, lowrank or quantize")
        return self

    @property
    def directions(self) -> list[str]:
        return [objectives.direction(o) for o in self.objectives]

    @property
    def quality(self) -> Objective:
        """The quality objective: ``accuracy`` (higher is better) or ``perplexity`` (lower)."""
        return objectives.quality_of(self.objectives)

    def loss_excess(self, baseline: float, value: float) -> float:
        """How far a quality ``value`` is past the constraint (> 0: infeasible)."""
        return loss_excess(self.quality, baseline, value, self.constraints.limit(self.quality))

    def feasible(self, baseline: float, value: float, latency_ms: float) -> bool:
        """Whether a point meets the quality and latency constraints (the rule for trials and
        for the standard recipe's variants alike)."""
        limit = self.constraints.max_latency_ms
        return self.loss_excess(baseline, value) <= 0 and (limit is None or latency_ms <= limit)

    @property
    def workdir_path(self) -> Path:
        return Path(self.workdir or Path("runs") / self.name).resolve()

    def fingerprint(self) -> str:
        """Hash of what decides the search's results (not n_trials, concurrency, or timeouts)."""
        keep = self.model_dump(
            mode="json",
            exclude={
                "n_trials",
                "concurrency",
                "profile_concurrency",
                "trial_timeout_s",
                "workdir",
                "ray",
                "mlflow",
                "optuna",
                "latency",
            },
        )
        return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:16]

    def hardware_profiles(self) -> list[HardwareProfile]:
        profiles = [get_profile(p) for p in self.profiles]
        names = {p.name for p in profiles}
        if len(names) < len(profiles):
            twice = sorted(
                {p.name for p in profiles if [q.name for q in profiles].count(p.name) > 1}
            )
            raise ConfigError(
                f"profiles: {', '.join(twice)} is named more than once ({self.profiles}); "
                "list each profile once"
            )
        unknown = sorted(set(self.profile_concurrency) - names)
        if unknown:
            raise ConfigError(
                f"profile_concurrency: {', '.join(unknown)} is not a profile of this search "
                f"(its profiles: {', '.join(sorted(names))}); use one of those names"
            )
        return profiles

    def concurrency_of(self, profile: str) -> int:
        """At most this many evaluations of ``profile`` in flight."""
        return min(self.profile_concurrency.get(profile, self.concurrency), self.concurrency)


ConfigLike = Union["SearchConfig", str, os.PathLike, Mapping[str, Any]]


def as_config(config: ConfigLike) -> SearchConfig:
    """A validated, resolved config from a :class:`SearchConfig`, a YAML file's path or a
    mapping of fields: every entry point checks a config the same way, whichever it is given
    (the profiles exist, ``profile_concurrency`` names them, the work directory resolved).

    Example:
        >>> from tightfit.config import as_config
        >>> config = as_config({"name": "demo", "model": "digits-cnn", "data": "digits"})
        >>> config.profiles, config.workdir_path.name
        (['cpu-ort'], 'demo')
    """
    if isinstance(config, SearchConfig):
        return config_from_dict(config.model_dump(mode="json"), source="SearchConfig")
    if isinstance(config, (str, os.PathLike)):
        return load_config(config)
    if isinstance(config, Mapping):
        return config_from_dict(dict(config))
    raise ConfigError(
        f"a search config is a SearchConfig, the path of a YAML file or a mapping of its "
        f"fields, not {type(config).__name__}"
    )


def load_config(path: str | os.PathLike, overrides: dict[str, Any] | None = None) -> SearchConfig:
    """Read, validate and resolve a search YAML file.

    Relative profile paths are resolved against the config file's folder; a relative
    ``workdir`` against the current directory. Every problem raises :class:`ConfigError`.

    Example:
        >>> config = load_config("examples/digits.yaml", {"n_trials": 8})  # doctest: +SKIP
        >>> config.n_trials  # doctest: +SKIP
        8
    """
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file '{path}' does not exist") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config file ({e.strerror})") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({_yaml_where(e)})") from None
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{path}: a search config must be a mapping of fields, got {type(raw).__name__}"
        )
    raw = {**raw, **(overrides or {})}
    return config_from_dict(raw, source=str(path), base_dir=path.parent)


def config_from_dict(
    raw: dict[str, Any], source: str = "config", base_dir: Path | None = None
) -> SearchConfig:
    """Validate a config mapping; resolve profile paths and the work directory."""
    try:
        config = SearchConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(describe_validation_error(source, e, root=SearchConfig)) from None
    resolved = []
    for i, name in enumerate(config.profiles):
        try:
            get_profile(name, base_dir=base_dir)
        except ConfigError as e:
            raise ConfigError(f"{source}: profiles[{i}]: {e}") from None
        p = Path(name)
        is_file = name.endswith((".yaml", ".yml"))
        resolved.append(str((base_dir or Path()) / p) if is_file and not p.is_absolute() else name)
    config = config.model_copy(update={"profiles": resolved, "workdir": str(config.workdir_path)})
    try:
        config.hardware_profiles()  # profile_concurrency names profiles of this search
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    return config
