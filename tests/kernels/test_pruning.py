from __future__ import annotations

import copy

import numpy as np
import torch

from tightfit.config import RecoverySpec
from tightfit.evaluators import predict
from tightfit.kernels import _torch_pruning as adapter
from tightfit.kernels import compress
from tightfit.spaces import Candidate


def test_one_ratio_prunes_the_whole_coupled_group(tiny_model, tiny_ctx) -> None:
    groups = {
        g.root: g for g in adapter.coupled_groups(tiny_model, tiny_ctx.example_inputs, ("fc",))
    }
    residual = next(g for g in groups.values() if "shortcut" in g.members and "conv2" in g.members)
    model = copy.deepcopy(tiny_model)
    kept = adapter.prune_groups(
        model, tiny_ctx.example_inputs, {residual.root: 0.5}, ("fc",), round_to=8
    )
    assert kept[residual.root] == 16
    # every member of the group shrank together, the classifier's outputs did not
    assert model.conv2.out_channels == model.shortcut.out_channels == model.fc.in_features == 16
    assert model.fc.out_features == 10
    assert model(*tiny_ctx.example_inputs).shape == (2, 10)


def test_round_to_keeps_multiples(tiny_model, tiny_ctx) -> None:
    model = copy.deepcopy(tiny_model)
    kept = adapter.prune_groups(model, tiny_ctx.example_inputs, {"conv1": 0.3}, ("fc",), round_to=8)
    assert kept["conv1"] % 8 == 0 and kept["conv1"] < 32


def test_pruning_is_deterministic_and_exports(tiny_model, tiny_ctx, digits, tmp_path) -> None:
    c = Candidate(base_model="m", prune={"conv1": 0.5, "stem.0": 0.5})
    a = compress(tiny_model, c, tiny_ctx, tmp_path / "a")
    b = compress(tiny_model, c, tiny_ctx, tmp_path / "b")
    assert a.onnx_path.read_bytes() == b.onnx_path.read_bytes()
    assert a.report["prune"]["kept_channels"] == {"conv1": 16, "stem.0": 8}
    # the exported model computes what the compressed torch model computes
    x = digits.validation["image"][:16]
    with torch.no_grad():
        expected = a.model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(predict(a.onnx_path, {"image": x}), expected, atol=1e-4, rtol=1e-4)
    assert tiny_model.conv1.out_channels == 32  # the base model is untouched


def test_batchnorm_recalibration_restores_accuracy(digits, fast_profile, tmp_path) -> None:
    from dataclasses import replace

    from tests.conftest import make_ctx
    from tightfit.evaluators import evaluate_accuracy
    from tightfit.examples.digits import pretrained_cnn

    model = pretrained_cnn(width=16, epochs=3, cache_dir=tmp_path)
    ctx = make_ctx(model, digits, fast_profile, tmp_path, classifier="fc")
    base = evaluate_accuracy(ctx.baseline_onnx, digits)
    c = Candidate(
        base_model="m",
        prune={g: 0.25 for g in ("stem.0", "layer1.conv1", "layer2.conv1", "layer3.conv1")},
    )
    with_bn = evaluate_accuracy(compress(model, c, ctx, tmp_path / "bn").onnx_path, digits)
    without = evaluate_accuracy(
        compress(
            model, c, replace(ctx, recovery=RecoverySpec(batchnorm=False)), tmp_path / "nobn"
        ).onnx_path,
        digits,
    )
    assert base > 0.9
    assert with_bn > without
