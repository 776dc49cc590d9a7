"""Forward hooks that are always removed: what kernels (and the workspace) learn by watching
a model run."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn


def run_watched(model: nn.Module, inputs: tuple[torch.Tensor, ...], handles: Iterable[Any]) -> None:
    """``model(*inputs)`` without gradients, with the hooks ``handles`` registered, which are
    removed afterwards whatever happens."""
    handles = list(handles)
    try:
        with torch.no_grad():
            model(*inputs)
    finally:
        for h in handles:
            h.remove()
