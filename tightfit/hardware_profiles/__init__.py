"""Named deployment targets and the protocol that measures latency on them."""

from tightfit.hardware_profiles._profile import (
    DEFAULT_OPSET,
    GenerationWorkload,
    HardwareProfile,
    MeasurementProtocol,
    QuantizationSettings,
)
from tightfit.hardware_profiles._registry import get_profile, list_profiles
from tightfit.hardware_profiles._runtimes import RUNTIMES, RuntimeSpec

__all__ = [
    "DEFAULT_OPSET",
    "GenerationWorkload",
    "HardwareProfile",
    "MeasurementProtocol",
    "QuantizationSettings",
    "RUNTIMES",
    "RuntimeSpec",
    "get_profile",
    "list_profiles",
]
