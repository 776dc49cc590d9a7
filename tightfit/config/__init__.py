"""SearchConfig: one YAML file describes a whole search; validated here, at the boundary.

Errors name the file and the field, and say what is wrong and what was given::

    search.yaml: space.prune.ratios[2] must be in [0, 1), got 1.5
"""

from tightfit.config._parts import (
    CallableSpec,
    Constraints,
    DistillSpec,
    LatencySpec,
    LowRankSpace,
    MlflowSpec,
    ModelSpec,
    Objective,
    OptunaSpec,
    PruneSpace,
    QuantizeSpace,
    RaySpec,
    ReconstructSpec,
    RecoverySpec,
    SamplerSpec,
    SeedsSpec,
    SensitivitySpec,
    SpaceSpec,
    StagedSpec,
    callable_reference,
    drop_excess,
)
from tightfit.config._search import (
    ConfigLike,
    SearchConfig,
    as_config,
    config_from_dict,
    load_config,
)

__all__ = [
    "CallableSpec",
    "ConfigLike",
    "Constraints",
    "DistillSpec",
    "LatencySpec",
    "LowRankSpace",
    "MlflowSpec",
    "ModelSpec",
    "Objective",
    "OptunaSpec",
    "PruneSpace",
    "QuantizeSpace",
    "RaySpec",
    "ReconstructSpec",
    "RecoverySpec",
    "SamplerSpec",
    "SearchConfig",
    "SeedsSpec",
    "SensitivitySpec",
    "SpaceSpec",
    "StagedSpec",
    "as_config",
    "callable_reference",
    "config_from_dict",
    "drop_excess",
    "load_config",
]
