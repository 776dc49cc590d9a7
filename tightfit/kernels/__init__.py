"""Compression kernels: structured pruning, low-rank factorization, quantization, and (off by
default) dropping whole decoder blocks.

A kernel is one file with one registered class (see ``_base.Kernel``); ``apply`` and
``compress`` run every registered kernel that the candidate uses, in registration order.
"""

from tightfit.kernels import depth, lowrank, pruning, quantization  # noqa: F401  (registration)
from tightfit.kernels._base import Kernel, SurgeryContext
from tightfit.kernels._discover import discover, discover_units, unrecognised_layers
from tightfit.kernels._pipeline import Compressed, apply, compress, probe_units
from tightfit.kernels._registry import get_kernel, list_kernels, register_kernel, registered_kernels
from tightfit.kernels.export import export_onnx

__all__ = [
    "Compressed",
    "Kernel",
    "SurgeryContext",
    "apply",
    "compress",
    "discover",
    "discover_units",
    "probe_units",
    "export_onnx",
    "get_kernel",
    "list_kernels",
    "register_kernel",
    "registered_kernels",
    "unrecognised_layers",
]
