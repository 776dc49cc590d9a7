"""Apply a Candidate: torch kernels in registration order, export, then ONNX kernels."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from tightfit.exceptions import CandidateError
from tightfit.kernels._base import SurgeryContext
from tightfit.kernels._registry import _KERNELS
from tightfit.kernels.export import export_onnx
from tightfit.kernels.precision import to_float16

if TYPE_CHECKING:
    from tightfit.spaces import Candidate


@dataclass
class Compressed:
    """The result of applying a candidate: the final ONNX file and what each kernel did."""

    onnx_path: Path
    model: nn.Module
    report: dict[str, Any] = field(default_factory=dict)


def apply(model: nn.Module, candidate: Candidate, ctx: SurgeryContext) -> tuple[nn.Module, dict]:
    """A compressed copy of ``model`` after the torch-stage kernels (``model`` is untouched)."""
    compressed = copy.deepcopy(model).eval()
    report: dict[str, Any] = {}
    for kernel in _KERNELS.values():
        plan = candidate.plan_for(kernel.knob)
        if kernel.stage == "torch" and plan:
            report[kernel.name] = kernel.apply(compressed, plan, ctx)
    if report and ctx.recalibrate_bn:
        n_bn = recalibrate_batchnorm(compressed, ctx.calibration_tensors())
        if n_bn:
            report["bn_recalibrated"] = n_bn
    compressed.eval()
    _check_forward(model, compressed, ctx)
    return compressed, report


def recalibrate_batchnorm(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> int:
    """Re-estimate BatchNorm running statistics on calibration inputs; return how many.

    Pruning and factorization change the distribution each BatchNorm sees; its stored
    statistics then mis-normalise and accuracy collapses. A forward pass over calibration data
    with a cumulative average fixes that at the cost of one inference (no labels, no training).
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return 0
    saved = [(m, m.momentum) for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average over the calibration batch
        m.train()
    try:
        with torch.no_grad():
            model(*inputs)
    finally:
        for m, momentum in saved:
            m.momentum = momentum
        model.eval()
    return len(norms)


def _check_forward(reference: nn.Module, model: nn.Module, ctx: SurgeryContext) -> None:
    with torch.no_grad():
        try:
            out = model(*ctx.example_inputs)
        except Exception as e:
            raise CandidateError(
                f"compressed model fails its forward pass: {type(e).__name__}: {e}"
            ) from e
        ref = reference(*ctx.example_inputs)
    if not isinstance(out, torch.Tensor) or out.shape != ref.shape:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise CandidateError(f"compressed model's output is {got}, expected {tuple(ref.shape)}")
    if not math.isfinite(float(out.abs().sum())):
        raise CandidateError("compressed model outputs NaN or inf")


def compress(
    model: nn.Module, candidate: Candidate, ctx: SurgeryContext, out_dir: Path
) -> Compressed:
    """Apply every kernel of ``candidate`` and write ``out_dir/model.onnx``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    compressed, report = apply(model, candidate, ctx)
    float_path = export_onnx(
        compressed, ctx.example_inputs, ctx.input_names, out_dir / "float.onnx"
    )
    current = float_path
    for kernel in _KERNELS.values():
        plan = candidate.plan_for(kernel.knob)
        if kernel.stage == "onnx" and plan:
            dst = out_dir / f"{kernel.name}.onnx"
            report[kernel.name] = kernel.apply_onnx(current, dst, plan, ctx)
            current = dst
    if ctx.profile.float_precision == "fp16":
        current = to_float16(current, out_dir / "fp16.onnx")
        report["float_precision"] = "fp16"
    final = out_dir / "model.onnx"
    current.replace(final)
    for stale in out_dir.glob("*.onnx"):
        if stale != final:
            stale.unlink()
    return Compressed(onnx_path=final, model=compressed, report=report)
