"""The kernel interface: discover the units a kernel can act on, and apply a plan to them."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from tightfit.config import RecoverySpec
from tightfit.spaces import Refusal, Unit

if TYPE_CHECKING:
    import torch
    from torch import nn

    from tightfit.config import SpaceSpec
    from tightfit.hardware_profiles import HardwareProfile


@dataclass(frozen=True)
class SurgeryContext:
    """What kernels need besides the model: inputs, calibration data and the target."""

    example_inputs: tuple[torch.Tensor, ...]
    input_names: tuple[str, ...]
    calibration: dict[str, np.ndarray]
    profile: HardwareProfile
    ignore: tuple[str, ...] = ()
    classifier: str | None = None
    baseline_onnx: Path | None = None
    min_rank: int = 8
    prune_importance: str = "magnitude"  # how pruning ranks channels: config.PruneSpace.importance
    prune_ignore: tuple[str, ...] = ()  # modules pruning alone leaves alone: PruneSpace.ignore
    recovery: RecoverySpec = field(default_factory=RecoverySpec)
    #: the fusions of ``baseline_onnx`` where it is the float graph a candidate that changes
    #: nothing in torch would export and fuse to (the workspace's): such a candidate (int8 or
    #: 4-bit only) starts from it instead of exporting again. None: not known to be, export.
    baseline_fusions: dict[str, int] | None = None

    def calibration_tensors(self, limit: int = 128) -> tuple[torch.Tensor, ...]:
        """Up to ``limit`` calibration samples as torch tensors, in input order."""
        import torch

        return tuple(torch.from_numpy(self.calibration[n][:limit]) for n in self.input_names)

    def export(self, model: nn.Module, path: Path) -> Path:
        """``model`` as ONNX at ``path``, exported as every graph of this search is (the
        example inputs' names and axes, the profile's exporter and opset)."""
        from tightfit.kernels.export import export_for

        return export_for(self.profile, model, self.example_inputs, self.input_names, path)


class Kernel(ABC):
    """A compression kernel. Subclasses set ``name``, ``knob`` and ``stage`` and register."""

    name: ClassVar[str]
    knob: ClassVar[str]
    stage: ClassVar[str]  # "torch" (acts on the nn.Module) or "onnx" (acts on the exported file)
    order: ClassVar[int]  # kernels apply in increasing order: prune, then factorize, then quantize

    @abstractmethod
    def units(self, model: nn.Module, ctx: SurgeryContext, space: SpaceSpec) -> list[Unit]:
        """The units of ``model`` this kernel can act on, with their choices from ``space``."""

    def settings(self, space: SpaceSpec) -> dict[str, Any]:
        """This kernel's section of ``space.kernels`` (a kernel beyond the built-in three reads
        its choices there: ``space: {kernels: {<name>: {...}}}`` in the config)."""
        return dict(space.kernels.get(self.name, {}))

    def refusals(self, model: nn.Module, ctx: SurgeryContext, space: SpaceSpec) -> list[Refusal]:
        """Parts of ``model`` this kernel recognises but will not act on, with the reason."""
        return []

    def strongest(self, units: list[Unit]) -> dict[str, Any]:
        """The plan that probes ``units`` together when the space is discovered: each at its
        strongest level (its last choice)."""
        return {u.path: u.choices[-1] for u in units}

    def apply(self, model: nn.Module, plan: dict[str, Any], ctx: SurgeryContext) -> dict[str, Any]:
        """Torch stage: change ``model`` in place; return a report of what was done."""
        raise NotImplementedError

    def apply_onnx(
        self, src: Path, dst: Path, plan: dict[str, Any], ctx: SurgeryContext
    ) -> dict[str, Any]:
        """ONNX stage: write the transformed ``src`` to ``dst``; return a report."""
        raise NotImplementedError
