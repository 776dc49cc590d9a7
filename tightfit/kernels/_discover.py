"""Discovery: which units of a model every registered kernel can act on, and what it refuses."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from tightfit._naming import unknown_name_message
from tightfit.exceptions import ConfigError
from tightfit.kernels._base import SurgeryContext
from tightfit.kernels._pipeline import probe_units
from tightfit.kernels._registry import registered_kernels
from tightfit.spaces import Refusal, Unit

if TYPE_CHECKING:
    from torch import nn

    from tightfit.config import SpaceSpec


def discover(
    model: nn.Module, ctx: SurgeryContext, space: SpaceSpec
) -> tuple[list[Unit], list[Refusal]]:
    """Ask every registered kernel which units of ``model`` it can act on, and which parts it
    will not act on; then try each torch-stage kernel's strongest level (see
    :func:`tightfit.kernels.probe_units`), refusing the units that fail it."""
    known = {k.name for k in registered_kernels()}
    for name in space.kernels:
        if name not in known:
            raise ConfigError(f"space.kernels: {unknown_name_message('kernel', name, known)}")
    units: list[Unit] = []
    refused: list[Refusal] = []
    for kernel in registered_kernels():
        units.extend(kernel.units(model, ctx, space))
        refused.extend(kernel.refusals(model, ctx, space))
    with tempfile.TemporaryDirectory(prefix="tightfit-probe-") as scratch:
        units, failed = probe_units(model, units, ctx, Path(scratch))
    return units, unrecognised_layers(model) + refused + failed


def unrecognised_layers(model: nn.Module) -> list[Refusal]:
    """Layers holding a weight matrix that no kernel knows the layout of (transformers'
    ``Conv1D`` in GPT-2, stores its weight in x out): left as they are, and said so."""
    from torch import nn

    known = (nn.Linear, nn.modules.conv._ConvNd, nn.Embedding, nn.EmbeddingBag)
    out = []
    for path, module in model.named_modules():
        weight = module._parameters.get("weight")
        if weight is not None and weight.dim() >= 2 and not isinstance(module, known):
            out.append(
                Refusal(
                    path,
                    "*",
                    f"{type(module).__name__} is not an nn.Linear or nn.ConvNd: no kernel knows "
                    "its weight layout, so it is left as it is",
                )
            )
    return out


def discover_units(model: nn.Module, ctx: SurgeryContext, space: SpaceSpec) -> list[Unit]:
    """The units of :func:`discover` (refusals left out)."""
    return discover(model, ctx, space)[0]
