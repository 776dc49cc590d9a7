"""The one place tightfit reaches past PyTorch's public API (torch is bounded in
pyproject.toml; a change there breaks here, loudly, and nowhere else).

- :func:`torchlib_registry_cached`: ``torch.onnx.export(dynamo=True)`` rebuilds its table of
  ATen-to-ONNX translations (``ONNXRegistry.from_torchlib``, about 500 onnxscript functions
  parsed from their source) on every call: 0.8 s of a small CNN's 1.4 s export, each
  candidate again. The table depends only on the opset and is not changed by an export, so
  it is built once per process and opset.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

_LOCK = threading.RLock()
_BUILT: dict[str, Any] = {}


def _registry_class() -> Any:
    import torch

    try:
        from torch.onnx._internal.exporter._registration import ONNXRegistry
    except ImportError as e:
        raise RuntimeError(
            f"torch {torch.__version__} no longer offers "
            f"torch.onnx._internal.exporter._registration.ONNXRegistry as tightfit expects "
            f"({e}); install the torch version pyproject.toml allows"
        ) from e
    if not isinstance(ONNXRegistry.__dict__.get("from_torchlib"), classmethod):
        raise RuntimeError(
            f"torch {torch.__version__}'s ONNXRegistry.from_torchlib is no longer a classmethod "
            "as tightfit expects; install the torch version pyproject.toml allows"
        )
    return ONNXRegistry


@contextlib.contextmanager
def torchlib_registry_cached() -> Iterator[None]:
    """Within this block, the dynamo exporter's registry is built once per opset and reused."""
    registry = _registry_class()
    original = registry.__dict__["from_torchlib"]

    def cached(cls: Any, *args: Any, **kwargs: Any) -> Any:
        key = repr((cls, args, sorted(kwargs.items())))
        if key not in _BUILT:
            _BUILT[key] = original.__func__(cls, *args, **kwargs)
        return _BUILT[key]

    with _LOCK:
        registry.from_torchlib = classmethod(cached)
        try:
            yield
        finally:
            registry.from_torchlib = original
