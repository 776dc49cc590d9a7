"""Fixtures of the evaluator tests."""

from __future__ import annotations

import pytest
import torch

from tests import models
from tests.conftest import make_ctx
from tightfit.kernels import compress, discover_units
from tightfit.spaces import CompressionSpace


@pytest.fixture()
def exported(digits, fast_profile, tmp_path):
    """ONNX bytes of a few candidates of two models with equal shapes and different weights."""
    out = {}
    for seed in (1, 2):  # noisy weights (the exporter folds identical tensors into one)
        model = models.tiny_resnet()
        with torch.no_grad():
            for param in model.parameters():
                param.add_(seed * 0.01 * torch.randn_like(param))
        ctx = make_ctx(model, digits, fast_profile, tmp_path / f"m{seed}")
        space = CompressionSpace(discover_units(model, ctx, _space()), "m", 0)
        for name, c in {
            "base": space.baseline(),
            "prune": space.uniform(prune_ratio=0.5),
            "int8": space.uniform(bits=8),
        }.items():
            result = compress(model, c, ctx, tmp_path / f"{seed}-{name}")
            out[seed, name] = result.onnx_path.read_bytes()
    return out


def _space():
    from tightfit.config import SpaceSpec

    return SpaceSpec.model_validate(
        {
            "prune": {"ratios": [0.0, 0.5]},
            "lowrank": {"enabled": False},
            "quantize": {"bits": [32, 8]},
        }
    )
