"""The one place tightfit reaches past ONNX Runtime's public API (onnxruntime is bounded to
<1.33 in pyproject.toml; a change there breaks here, loudly, and nowhere else).

- :func:`quantize_matmul_4bits`: the kernel MatMulNBits' quantizer itself packs weights with
  (``onnxruntime.capi._pybind_state``), so that 4-bit bias correction models exactly the
  rounding the deployed graph will do.
"""

from __future__ import annotations

from typing import Any


def quantize_matmul_4bits(*args: Any) -> None:
    """``onnxruntime.capi._pybind_state.quantize_matmul_4bits(packed, weight, scales,
    zero_points, block_size, n, k, symmetric)``: fills ``packed``, ``scales`` and
    ``zero_points`` in place."""
    import onnxruntime

    try:
        from onnxruntime.capi._pybind_state import quantize_matmul_4bits as quantize
    except ImportError as e:
        raise RuntimeError(
            f"onnxruntime {onnxruntime.__version__} no longer offers "
            f"capi._pybind_state.quantize_matmul_4bits as tightfit expects ({e}); install the "
            "onnxruntime version pyproject.toml allows"
        ) from e
    quantize(*args)
