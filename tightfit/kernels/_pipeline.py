"""Apply a Candidate: torch kernels in registration order, export, then ONNX kernels."""

from __future__ import annotations

import copy
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from tightfit.exceptions import CandidateError
from tightfit.kernels._base import Refusal, SurgeryContext, Unit
from tightfit.kernels._registry import registered_kernels
from tightfit.kernels.fusion import finish_decoder, fuse_for, packs, unfold_float_zero_points
from tightfit.kernels.precision import to_float16
from tightfit.kernels.recovery import distill, recalibrate_batchnorm, reconstruct

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
    for kernel in registered_kernels():
        plan = candidate.plan_for(kernel.knob)
        if kernel.stage == "torch" and plan:
            report[kernel.name] = kernel.apply(compressed, plan, ctx)
    recovery = ctx.recovery
    if report and recovery.reconstruct.enabled:
        inputs = ctx.calibration_tensors(limit=recovery.reconstruct.max_samples)
        errors = reconstruct(compressed, model, inputs, recovery.reconstruct)
        if errors:
            report["reconstructed"] = {
                "layers": len(errors),
                "max_error": max(errors.values()),
            }
    if report and recovery.batchnorm:
        n_bn = recalibrate_batchnorm(compressed, ctx.calibration_tensors())
        if n_bn:
            report["bn_recalibrated"] = n_bn
    if report and recovery.distill.enabled:
        inputs = ctx.calibration_tensors(limit=recovery.distill.max_samples)
        report["distilled"] = distill(compressed, model, inputs, recovery.distill)
    compressed.eval()
    _check_forward(model, compressed, ctx)
    return compressed, report


def probe_units(
    model: nn.Module, units: list[Unit], ctx: SurgeryContext, scratch: Path
) -> tuple[list[Unit], list[Refusal]]:
    """The units whose strongest level applies, runs and exports, and refusals for the rest.

    Run when the space is discovered, so that a unit no candidate can use costs no trial. Per
    torch-stage kernel, every unit at its strongest level at once: one model surgery, one
    forward pass, one export. Only when that fails is each unit tried alone, and those that
    fail alone are refused with the error.
    """
    kept = list(units)
    refused: list[Refusal] = []
    for kernel in registered_kernels():
        mine = [u for u in kept if u.knob == kernel.knob]
        if kernel.stage != "torch" or not mine:
            continue
        if _probe_fails(model, kernel, mine, ctx, scratch) is None:
            continue
        for unit in mine:
            reason = _probe_fails(model, kernel, [unit], ctx, scratch)
            if reason is not None:
                kept.remove(unit)
                refused.append(Refusal(unit.path, unit.knob, f"at {unit.choices[-1]}: {reason}"))
    return kept, refused


def _probe_fails(
    model: nn.Module, kernel: Any, units: list[Unit], ctx: SurgeryContext, scratch: Path
) -> str | None:
    """Why ``kernel`` at the strongest level of ``units`` (``kernel.strongest``) fails; None
    when it applies, runs and exports."""
    compressed = copy.deepcopy(model).eval()
    try:
        kernel.apply(compressed, kernel.strongest(units), ctx)
        _check_forward(model, compressed, ctx)
        ctx.export(compressed, scratch / "probe.onnx")
    except Exception as e:  # any failure: the unit is refused with it
        message = str(e) if isinstance(e, CandidateError) else f"{type(e).__name__}: {e}"
        return message.splitlines()[0][:300] if message else type(e).__name__
    return None


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
    float_path = out_dir / "float.onnx"
    if not report and ctx.baseline_onnx is not None and ctx.baseline_fusions is not None:
        # nothing changed in torch: the export would be the baseline's, fused as it is
        shutil.copyfile(ctx.baseline_onnx, float_path)
        if ctx.baseline_fusions:
            report["fusions"] = dict(ctx.baseline_fusions)
    else:
        ctx.export(compressed, float_path)
        # fused as the baseline was (kernels.fusion), checked on a few calibration samples
        fused = fuse_for(ctx.profile, float_path, {k: v[:8] for k, v in ctx.calibration.items()})
        if fused.counts:
            report["fusions"] = fused.counts
        if fused.refused:
            report["fusion_refused"] = fused.refused
    current = float_path
    for kernel in registered_kernels():  # (a Candidate has no choice inside a dropped block)
        plan = candidate.plan_for(kernel.knob)
        if kernel.stage == "onnx" and plan:
            dst = out_dir / f"{kernel.name}.onnx"
            report[kernel.name] = kernel.apply_onnx(current, dst, plan, ctx)
            current = dst
    if packs(ctx.profile):  # after precision, so each projection kept its own
        packed = out_dir / "packed.onnx"
        report.update(finish_decoder(current, packed))
        current = packed
    if ctx.profile.quantization.int4_grid == "minmax" and ctx.profile.runtime == "onnxruntime":
        unfolded = out_dir / "unfolded.onnx"  # ONNX Runtime's fast kernel takes no float zeros
        if n := unfold_float_zero_points(current, unfolded):
            report["unfolded_zero_points"] = n
            current = unfolded
    if ctx.profile.float_precision == "fp16":
        current = to_float16(current, out_dir / "fp16.onnx")
        report["float_precision"] = "fp16"
    final = out_dir / "model.onnx"
    current.replace(final)
    for stale in out_dir.glob("*.onnx"):
        if stale != final:
            stale.unlink()
    return Compressed(onnx_path=final, model=compressed, report=report)
