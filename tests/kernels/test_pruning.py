from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch

from tests.conftest import make_ctx
from tightfit.config import LowRankSpace, RecoverySpec, SpaceSpec, config_from_dict
from tightfit.evaluators import predict
from tightfit.exceptions import ConfigError
from tightfit.kernels import SurgeryContext, compress, discover_units
from tightfit.kernels import _torch_pruning as adapter
from tightfit.spaces import Candidate
from tightfit.workspace import Setup, Workspace


def test_one_ratio_prunes_the_whole_coupled_group(tiny_model, tiny_ctx) -> None:
    groups = {
        g.root: g for g in adapter.coupled_groups(tiny_model, tiny_ctx.example_inputs, ("fc",))
    }
    residual = next(g for g in groups.values() if "shortcut" in g.members and "conv2" in g.members)
    model = copy.deepcopy(tiny_model)
    kept, _ = adapter.prune_groups(
        model, tiny_ctx.example_inputs, {residual.root: 0.5}, ("fc",), round_to=8
    )
    assert kept[residual.root] == 16
    # every member of the group shrank together, the classifier's outputs did not
    assert model.conv2.out_channels == model.shortcut.out_channels == model.fc.in_features == 16
    assert model.fc.out_features == 10
    assert model(*tiny_ctx.example_inputs).shape == (2, 10)


def test_round_to_keeps_multiples(tiny_model, tiny_ctx) -> None:
    model = copy.deepcopy(tiny_model)
    kept, _ = adapter.prune_groups(
        model, tiny_ctx.example_inputs, {"conv1": 0.3}, ("fc",), round_to=8
    )
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


def _dead_channel_chain() -> torch.nn.Sequential:
    """conv(3->8) -> ReLU -> conv(8->4) -> conv(4->4): channel 0 of the first conv has the
    largest weights and is never active (a large negative bias under the ReLU)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(8, 4, 1),
        torch.nn.Conv2d(4, 4, 1),
    ).eval()
    with torch.no_grad():
        model[0].weight[0] = 5.0
        model[0].bias[0] = -1e3
        model[2].weight[:, 0] = 5.0  # its consumer's column is large too
    return model


def test_input_energy_is_the_mean_square_of_each_input_channel() -> None:
    from tightfit.kernels.pruning import ENERGY_BATCH, input_energy

    model = _dead_channel_chain()
    x = torch.randn(ENERGY_BATCH + 5, 3, 4, 4)  # two batches
    energy = input_energy(model, (x,))
    assert set(energy) == {"0", "2", "3"}
    torch.testing.assert_close(energy["0"], x.double().pow(2).mean(dim=(0, 2, 3)))
    hidden = model[1](model[0](x)).double()
    torch.testing.assert_close(energy["2"], hidden.pow(2).mean(dim=(0, 2, 3)))
    assert energy["2"][0] == 0.0


def test_activation_importance_drops_a_dead_channel_magnitude_keeps() -> None:
    from tightfit.kernels.pruning import input_energy

    x = (torch.randn(16, 3, 4, 4),)
    kept_big = {}
    for name in ("magnitude", "activation"):
        model = _dead_channel_chain()
        energy = input_energy(model, x) if name == "activation" else None
        kept, by_magnitude = adapter.prune_groups(
            model, x, {"0": 0.5}, ignored=("2", "3"), round_to=1, energy=energy
        )
        assert kept == {"0": 4} and by_magnitude == []
        kept_big[name] = bool((model[0].weight == 5.0).all(dim=(1, 2, 3)).any())
    assert kept_big == {"magnitude": True, "activation": False}


def test_a_group_without_a_measured_consumer_is_ranked_by_magnitude_and_named() -> None:
    from tightfit.kernels.pruning import input_energy

    model = _dead_channel_chain()
    x = (torch.randn(4, 3, 4, 4),)
    # conv "3" feeds nothing: its group has no consumer with an input energy
    _, by_magnitude = adapter.prune_groups(
        model, x, {"3": 0.5}, ignored=("0", "2"), round_to=1, energy=input_energy(model, x)
    )
    assert by_magnitude == ["3"]


def test_activation_importance_through_the_kernel_replays_and_exports(
    tiny_model, tiny_ctx, digits, tmp_path
) -> None:
    from dataclasses import replace

    ctx = replace(tiny_ctx, prune_importance="activation")
    c = Candidate(base_model="m", prune={"conv1": 0.5, "stem.0": 0.5})
    a = compress(tiny_model, c, ctx, tmp_path / "a")
    b = compress(tiny_model, c, ctx, tmp_path / "b")
    magnitude = compress(tiny_model, c, tiny_ctx, tmp_path / "m")
    assert a.report["prune"]["importance"] == "activation"
    assert magnitude.report["prune"]["importance"] == "magnitude"
    assert a.onnx_path.read_bytes() == b.onnx_path.read_bytes()  # export replays the trial
    # the two criteria keep different channels of the same sizes
    assert a.report["prune"]["kept_channels"] == magnitude.report["prune"]["kept_channels"]
    assert not torch.equal(a.model.conv1.weight, magnitude.model.conv1.weight)
    x = digits.validation["image"][:16]
    with torch.no_grad():
        expected = a.model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(predict(a.onnx_path, {"image": x}), expected, atol=1e-4, rtol=1e-4)


def test_input_energy_is_computed_once_per_model_state_and_inputs() -> None:
    from tightfit.kernels.pruning import cached_input_energy

    model = _dead_channel_chain()
    x = (torch.randn(4, 3, 4, 4),)
    first = cached_input_energy(model, x)
    assert cached_input_energy(copy.deepcopy(model), (x[0].clone(),)) is first
    with torch.no_grad():
        model[0].weight.mul_(2)
    changed = cached_input_energy(model, x)
    assert changed is not first and not torch.equal(changed["2"], first["2"])
    assert cached_input_energy(model, (x[0] + 1,)) is not changed


def test_prune_ignore_keeps_a_residual_stream_whole_but_quantizable(
    tiny_model, digits, fast_profile, tmp_path
) -> None:
    """space.prune.ignore leaves a coupled group to the other kernels (EfficientNet's residual
    stream: unpruned, int8); model.ignore leaves it to none."""
    base = make_ctx(tiny_model, digits, fast_profile, tmp_path)
    space = SpaceSpec(lowrank=LowRankSpace(enabled=False))
    stream = ("conv2", "shortcut")  # the block's output channels: conv2 + shortcut -> fc

    def paths(ctx: SurgeryContext) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {"prune_ratio": set(), "bits": set()}
        for u in discover_units(tiny_model, ctx, space):
            out[u.knob].add(u.path)
        return out

    everything = paths(base)
    assert set(stream) & everything["prune_ratio"]  # the stream's group is prunable by default
    assert "conv1" in everything["prune_ratio"]
    pruning_only = paths(dataclasses.replace(base, prune_ignore=stream))
    assert not set(stream) & pruning_only["prune_ratio"]
    assert "conv1" in pruning_only["prune_ratio"]
    assert set(stream) <= pruning_only["bits"] == everything["bits"]
    nowhere = paths(dataclasses.replace(base, ignore=stream))
    assert not set(stream) & (nowhere["prune_ratio"] | nowhere["bits"])

    # the candidate that prunes all it may and quantizes the stream: the stream keeps its width
    ctx = dataclasses.replace(base, prune_ignore=stream)
    candidate = Candidate(
        base_model="m",
        prune={p: 0.5 for p in pruning_only["prune_ratio"]},
        bits={p: 8 for p in stream},
    )
    built = compress(tiny_model, candidate, ctx, tmp_path / "c")
    assert built.model.conv1.out_channels == 16
    assert built.model.conv2.out_channels == built.model.shortcut.out_channels == 32
    assert built.report["quantize"]["int8_nodes"] == 2


@pytest.mark.parametrize(
    ("section", "field"),
    [("space", "space.prune.ignore"), ("recovery", "recovery.distill.hidden")],
)
def test_a_misspelt_module_path_is_refused_by_field(
    section: str, field: str, fast_profile, tmp_path
) -> None:
    paths = ["conv2", "short_cut"]
    given = {"prune": {"ignore": paths}} if section == "space" else {"distill": {"hidden": paths}}
    config = config_from_dict(
        {
            "name": "s",
            "model": {"callable": "tests.models:tiny_resnet", "ignore": ["fc"]},
            "data": "digits",
            section: given,
        }
    )
    with pytest.raises(
        ConfigError,
        match=rf"{field}\[1\]: 'short_cut' is not a module of model "
        r"'tests.models:tiny_resnet'; did you mean 'shortcut'",
    ):
        Workspace(Setup.of(config, fast_profile, tmp_path / "w"))
