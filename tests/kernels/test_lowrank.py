from __future__ import annotations

import numpy as np
import torch
from torch import nn

from tightfit.kernels.lowrank import break_even_rank, factorize, resolve_rank, svd_factors


def test_truncation_error_equals_discarded_singular_values() -> None:
    torch.manual_seed(0)
    w = torch.randn(24, 40, dtype=torch.float64)
    sigma = torch.linalg.svdvals(w)
    for rank in (1, 5, 12):
        first, second = svd_factors(w, rank)
        err = torch.linalg.matrix_norm(w - second @ first) ** 2
        assert torch.isclose(err, (sigma[rank:] ** 2).sum(), rtol=1e-9)


def test_break_even() -> None:
    assert break_even_rank(nn.Linear(64, 64)) == 32
    conv = nn.Conv2d(32, 64, 3)
    assert break_even_rank(conv) == 32 * 64 * 9 / (32 * 9 + 64)
    assert resolve_rank(nn.Linear(64, 64), 0.5, 8, 8) == 16
    assert resolve_rank(nn.Linear(16, 16), 0.99, 8, 8) is None  # min rank reaches break-even


def test_factorized_layers_match_at_full_rank() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 8, 12, 12)
    conv = nn.Conv2d(8, 16, 3, stride=2, padding=1)
    full = factorize(conv, rank=16)  # min(out, in*k*k): exact
    torch.testing.assert_close(full(x), conv(x), atol=1e-4, rtol=1e-4)
    lin = nn.Linear(20, 30)
    y = torch.randn(5, 20)
    torch.testing.assert_close(factorize(lin, 20)(y), lin(y), atol=1e-5, rtol=1e-5)


def test_rank_beyond_matrix_is_refused() -> None:
    import pytest

    with pytest.raises(ValueError, match="rank must be in"):
        svd_factors(torch.randn(4, 6), 5)


@torch.no_grad()
def test_activation_aware_beats_plain_on_skewed_inputs() -> None:
    torch.manual_seed(0)
    lin = nn.Linear(64, 64, bias=False)
    scale = torch.ones(64)
    scale[:8] = 20.0  # a few input channels carry most of the signal
    x = torch.randn(512, 64) * scale
    plain = factorize(lin, 16)
    aware = factorize(lin, 16, in_scale=x.abs().mean(0).sqrt())
    err = lambda m: float(((m(x) - lin(x)) ** 2).mean())  # noqa: E731
    assert err(aware) < err(plain)
    assert np.isfinite(err(aware))
