"""Baseline strategies: the standard deployment recipe, uniform compression, global magnitude
pruning (random search is the ``random`` sampler).

Each is a deterministic, seeded list of candidates. A search runs one alone (``strategy:
recipe``, ``uniform`` or ``global_magnitude``: its list in order, at most ``n_trials``), or
enqueues a few of each at the start of a sampler-driven search (``seeds:``), so the sampler
starts from the allocations practitioners try first.

- **Recipe**: what a user deploys in a minute without a search (``kernels.recipe``), as the
  candidates of the space that are it: every unit at the profile's lowest precision of the
  recipe (int8; int4 too for a generation profile), nothing pruned or factorized. Its fp32
  variant is the baseline trial itself: on the fused graph where the profile fuses, and in the
  profile's float precision (fp16 on GPU profiles). Its int8 is the study's format
  (``int8_format: auto`` measures the recipe's static and dynamic int8 and keeps the faster
  of those within the accuracy constraint: ``search._preflight.choose_int8``).

- **Uniform**: one level for every unit, swept over the product of the space's prune ratios,
  rank fractions and bit-widths. The usual first thing a user tries.
- **Global magnitude pruning** (Blalock et al., 2020, "What is the state of neural network
  pruning?"; Global MP): one importance threshold across every coupled group; each group loses
  the channels below it, so unimportant layers lose more. Channels are ranked as the pruner
  ranks them (``space.prune.importance``: torch-pruning's group L2 magnitude by default, or the
  activation-weighted contribution), mean-normalised per group, the scale torch-pruning's own
  global pruning compares on. A group never loses more than the space's largest ratio: the
  minimum kept against layer collapse. Swept over global ratios, with uniform bit-widths.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Mapping, Sequence

import numpy as np
from torch import nn

from tightfit.kernels import SurgeryContext, get_kernel
from tightfit.kernels.pruning import StructuredPruning
from tightfit.spaces import Candidate, CompressionSpace

#: Global ratios the global-magnitude sweep draws thresholds at (share of all channels).
GLOBAL_RATIOS = tuple(round(float(g), 4) for g in np.linspace(0.025, 0.8, 32))


def _ordered(candidates: list[Candidate], seed: int | None) -> list[Candidate]:
    if seed is not None:
        random.Random(seed).shuffle(candidates)
    return candidates


def recipe(space: CompressionSpace, generation: bool = False) -> list[Candidate]:
    """The recipe's compressed variants as candidates of ``space``: uniform int8, and uniform
    int4 for a ``generation`` profile (weight-only int4 is a decoder LM's recipe); each only
    where the space offers it (a space without quantization has none)."""
    out: list[Candidate] = []
    for bits in (8, 4) if generation else (8,):
        c = space.uniform(bits=bits)
        if not c.is_baseline and c not in out:
            out.append(c)
    return out


def uniform_sweep(space: CompressionSpace, seed: int | None = None) -> list[Candidate]:
    """Every distinct uniform candidate of the space (baseline excluded), weakest first, or in
    an order shuffled by ``seed``."""
    levels: dict[str, set] = {"prune_ratio": {0.0}, "rank": {1.0}, "bits": {32}}
    for u in space.units:
        levels[u.knob].update(u.choices)
    out: list[Candidate] = []
    for ratio, fraction, bits in itertools.product(
        sorted(levels["prune_ratio"]), sorted(levels["rank"]), sorted(levels["bits"])
    ):
        c = space.uniform(prune_ratio=ratio, rank_fraction=fraction, bits=bits)
        if not c.is_baseline and c not in out:
            out.append(c)
    return _ordered(out, seed)


def global_magnitude_allocation(
    importance: Mapping[str, Sequence[float]], space: CompressionSpace, global_ratio: float
) -> dict[str, float]:
    """Per-group prune ratios for one global threshold: the ``global_ratio`` quantile of every
    channel's importance; each group's share below it, snapped to the nearest level the group
    offers (never above its largest, the minimum kept)."""
    units = [u for u in space.units if u.knob == "prune_ratio" and u.path in importance]
    if not units:
        return {}
    pooled = np.concatenate([np.asarray(importance[u.path], dtype=float) for u in units])
    threshold = float(np.quantile(pooled, global_ratio))
    plan = {}
    for u in units:
        share = float(np.mean(np.asarray(importance[u.path], dtype=float) < threshold))
        plan[u.path] = min(u.choices, key=lambda c: (abs(c - share), c))
    return plan


def global_magnitude_sweep(
    space: CompressionSpace,
    importance: Mapping[str, Sequence[float]],
    seed: int | None = None,
    ratios: Sequence[float] = GLOBAL_RATIOS,
) -> list[Candidate]:
    """Distinct global-magnitude candidates over ``ratios`` x the space's bit-widths (baseline
    excluded), by increasing global ratio, or in an order shuffled by ``seed``."""
    bits_levels = sorted({32} | {b for u in space.units if u.knob == "bits" for b in u.choices})
    quant_plans = [space.uniform(bits=bits).bits for bits in bits_levels]
    out: list[Candidate] = []
    for g in ratios:
        plan = global_magnitude_allocation(importance, space, g)
        for quant in quant_plans:
            c = Candidate(base_model=space.base_model, prune=plan, bits=quant, seed=space.seed)
            if not c.is_baseline and c not in out:
                out.append(c)
    return _ordered(out, seed)


def channel_importance(model: nn.Module, ctx: SurgeryContext) -> dict[str, list[float]]:
    """The pruning kernel's per-channel importance of every coupled group."""
    kernel = get_kernel("prune")
    assert isinstance(kernel, StructuredPruning)
    return kernel.channel_importance(model, ctx)


def spread(candidates: Sequence[Candidate], k: int) -> list[Candidate]:
    """``k`` candidates spread evenly over a list (its ends included)."""
    if k <= 0 or not candidates:
        return []
    if k >= len(candidates):
        return list(candidates)
    idx = np.linspace(0, len(candidates) - 1, k).round().astype(int)
    return [candidates[i] for i in dict.fromkeys(idx.tolist())]
