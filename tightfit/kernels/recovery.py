"""Torch-stage recovery after pruning and factorization: BatchNorm statistics, distillation.

Both run on the calibration inputs only (no labels) and are deterministic for a candidate, so
the export replays exactly what the trial scored. Bias correction after quantization acts on
the ONNX graph: :mod:`tightfit.kernels.bias_correction`.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from tightfit.config import DistillSpec

DISTILL_SEED = 0


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


def distill(
    student: nn.Module, teacher: nn.Module, inputs: tuple[torch.Tensor, ...], spec: DistillSpec
) -> dict[str, Any]:
    """Train ``student`` (in place) to reproduce ``teacher``'s outputs on ``inputs``.

    ``spec.steps`` Adam steps on random mini-batches drawn with a fixed seed, on one thread so
    that every process computes the same float sums (export replays it bit for bit). The
    student stays in eval mode (BatchNorm statistics, dropout off): only weights move. Returns
    the loss used, its value over all inputs before and after, and the steps taken.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _distill(student, teacher, inputs, spec)
    finally:
        torch.set_num_threads(threads)


def _class_scores(outputs: torch.Tensor) -> bool:
    """Whether ``outputs`` look like class scores (KL applies): 2-D, several columns, and not
    L2-normalised rows (a sentence or image embedding, which KL would treat as logits)."""
    if outputs.ndim != 2 or outputs.shape[1] < 2:
        return False
    norms = outputs.float().norm(dim=1)
    return not bool(torch.allclose(norms, torch.ones_like(norms), atol=1e-3))


def _distill(
    student: nn.Module, teacher: nn.Module, inputs: tuple[torch.Tensor, ...], spec: DistillSpec
) -> dict[str, Any]:
    with torch.no_grad():
        targets = teacher(*inputs)
    kl = spec.loss == "kl" or (spec.loss == "auto" and _class_scores(targets))
    t = spec.temperature

    def loss_fn(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if kl:
            soft = F.log_softmax(target / t, dim=1)
            kl_div = F.kl_div(
                F.log_softmax(out / t, dim=1), soft, reduction="batchmean", log_target=True
            )
            return kl_div * (t * t)
        return F.mse_loss(out, target)

    def full_loss() -> float:
        with torch.no_grad():
            return round(float(loss_fn(student(*inputs), targets)), 6)

    student.eval()
    before = full_loss()
    params = [p for p in student.parameters() if p.is_floating_point()]
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.Adam(params, lr=spec.lr)
    generator = torch.Generator().manual_seed(DISTILL_SEED)
    n = len(inputs[0])
    with torch.enable_grad():
        for _ in range(spec.steps):
            rows = torch.randint(n, (min(spec.batch_size, n),), generator=generator)
            loss = loss_fn(student(*(x[rows] for x in inputs)), targets[rows])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    for p in params:
        p.requires_grad_(False)
    return {
        "steps": spec.steps,
        "loss": "kl" if kl else "mse",
        "loss_before": before,
        "loss_after": full_loss(),
    }
