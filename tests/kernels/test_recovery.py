"""Recovery: bias correction after quantization (ONNX); reconstruction and distillation (torch)."""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from onnx import numpy_helper

from tests import models
from tests.conftest import make_ctx
from tightfit.config import CallableSpec, DistillSpec, ReconstructSpec, RecoverySpec, SpaceSpec
from tightfit.evaluators import predict
from tightfit.exceptions import CandidateError
from tightfit.hardware_profiles import HardwareProfile
from tightfit.kernels import compress
from tightfit.kernels.bias_correction import WeightQuant, int4_error, int8_error
from tightfit.kernels.quantization import _quantize_dynamic, _quantize_int8, _quantize_nbits
from tightfit.kernels.recovery import distill, reconstruct
from tightfit.spaces import Candidate
from tightfit.task import TaskData, load_data


def per_tensor(profile: HardwareProfile) -> HardwareProfile:
    q = profile.quantization.model_copy(update={"per_channel": False, "reduce_range": False})
    return profile.model_copy(update={"quantization": q})


def _dequantized_weights(path: Path) -> dict[str, np.ndarray]:
    """node name → its weight as the quantized file stores it (DequantizeLinear of int8)."""
    graph = onnx.load(str(path)).graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    out = {}
    for node in graph.node:
        if node.op_type not in ("Conv", "Gemm") or node.input[1] not in producer:
            continue
        dq = producer[node.input[1]]
        q, scale = inits[dq.input[0]], inits[dq.input[1]]
        zero = inits[dq.input[2]] if len(dq.input) > 2 else np.zeros_like(scale)
        axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
        shape = [1] * q.ndim
        if scale.ndim:
            shape[axis] = -1
        deq = (q.astype(np.float64) - zero.reshape(shape)) * scale.reshape(shape)
        out[node.name] = deq.astype(np.float32)
    return out


@pytest.mark.parametrize("per_channel", [True, False])
def test_int8_error_is_the_quantizers_own(tiny_ctx, fast_profile, tmp_path, per_channel) -> None:
    q = fast_profile.quantization.model_copy(
        update={"per_channel": per_channel, "reduce_range": False}
    )
    ctx = replace(tiny_ctx, profile=fast_profile.model_copy(update={"quantization": q}))
    graph = onnx.load(str(ctx.baseline_onnx)).graph
    nodes = {n.name for n in graph.node if n.op_type in ("Conv", "Gemm")}
    _quantize_int8(ctx.baseline_onnx, tmp_path / "q.onnx", nodes, ctx)
    stored = _dequantized_weights(tmp_path / "q.onnx")
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    weights = WeightQuant("QInt8", per_channel, reduce_range=False)
    assert len(stored) == len(nodes)
    for node in graph.node:
        if node.name in stored:
            w = inits[node.input[1]]
            axis = 0 if per_channel else None
            np.testing.assert_allclose(
                w + int8_error(w, axis, weights), stored[node.name], atol=1e-6
            )


def _save_matmul(w: np.ndarray, path: Path) -> None:
    """A one-node model ``y = x @ w`` (node "mm")."""
    k, n = w.shape
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [None, k])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [None, n])
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")],
        "g",
        [x],
        [y],
        [numpy_helper.from_array(w, "w")],
    )
    opsets = [onnx.helper.make_opsetid("", 17)]
    model = onnx.helper.make_model(
        graph, opset_imports=opsets, ir_version=onnx.helper.find_min_ir_version_for(opsets)
    )
    onnx.save(model, str(path))


def test_int4_error_is_matmulnbits_own(tmp_path) -> None:
    rng = np.random.default_rng(0)
    k, n = 80, 16  # K not a multiple of the block: the padding path too
    w = rng.standard_normal((k, n)).astype(np.float32)
    _save_matmul(w, tmp_path / "f.onnx")
    _quantize_nbits(tmp_path / "f.onnx", tmp_path / "q.onnx", {"mm"})
    # one-hot rows read the stored weights back (exact under the int8 activation blocks)
    stored = predict(tmp_path / "q.onnx", {"x": np.eye(k, dtype=np.float32)})
    np.testing.assert_allclose(w + int4_error(w), stored, atol=1e-5)
    assert np.abs(int4_error(w)).max() > 1e-3  # 4-bit blocks do round


@pytest.mark.parametrize("per_channel", [True, False])
def test_dynamic_int8_follows_the_profiles_per_channel(tiny_ctx, tmp_path, per_channel) -> None:
    # columns 1000x apart in scale: one scale per tensor rounds the small columns to nothing
    rng = np.random.default_rng(0)
    k = 64
    w = rng.standard_normal((k, 8)).astype(np.float32) * np.array([1e3] + [1.0] * 7, np.float32)
    _save_matmul(w, tmp_path / "f.onnx")
    q = tiny_ctx.profile.quantization.model_copy(update={"per_channel": per_channel})
    ctx = replace(tiny_ctx, profile=tiny_ctx.profile.model_copy(update={"quantization": q}))
    _quantize_dynamic(tmp_path / "f.onnx", tmp_path / "q.onnx", {"mm"}, ctx)
    x = {"x": rng.standard_normal((32, k)).astype(np.float32)}
    ops = {n.op_type for n in onnx.load(str(tmp_path / "q.onnx")).graph.node}
    assert "MatMulInteger" in ops or "DynamicQuantizeMatMul" in ops
    want = x["x"] @ w
    small = np.abs(predict(tmp_path / "q.onnx", x) - want)[:, 1:].max() / np.abs(want[:, 1:]).max()
    if per_channel:
        assert small < 0.05
    else:
        assert small > 0.5


def _mean_shift(path: Path, ref: np.ndarray, x: dict) -> float:
    return float(np.abs((predict(path, x) - ref).mean(axis=0)).mean())


def test_bias_correction_removes_the_mean_shift(digits, fast_profile, tmp_path) -> None:
    model = models.outlier_cnn()
    ctx = make_ctx(model, digits, per_tensor(fast_profile), tmp_path, classifier="fc")
    bits = Candidate(base_model="m", bits={"conv1": 8, "conv2": 8, "fc": 8})
    outputs = {}
    for mode in (False, True):
        out = compress(
            model,
            bits,
            replace(ctx, recovery=RecoverySpec(bias_correction=mode)),
            tmp_path / str(mode),
        )
        outputs[mode] = out
    assert "bias_correction" not in outputs[False].report["quantize"]
    assert outputs[True].report["quantize"]["bias_correction"] == {"layers": 3, "kept": True}
    x = {"image": digits.validation["image"]}  # held out: the correction saw calibration data
    ref = predict(ctx.baseline_onnx, x)
    errors = {mode: predict(out.onnx_path, x) - ref for mode, out in outputs.items()}
    shift = {mode: float(np.abs(e.mean(axis=0)).mean()) for mode, e in errors.items()}
    mse = {mode: float((e**2).mean()) for mode, e in errors.items()}
    assert shift[True] < 0.5 * shift[False]
    assert mse[True] < 0.5 * mse[False]


def test_bias_correction_auto(tiny_model, tiny_ctx, tmp_path) -> None:
    bits = Candidate(base_model="m", bits={"conv1": 8, "conv2": 8})
    # per-channel int8: nothing coarse to correct
    fine = compress(tiny_model, bits, tiny_ctx, tmp_path / "fine")
    assert "bias_correction" not in fine.report["quantize"]
    coarse = compress(
        tiny_model, bits, replace(tiny_ctx, profile=per_tensor(tiny_ctx.profile)), tmp_path / "c"
    )
    done = coarse.report["quantize"]["bias_correction"]
    assert done["layers"] == 2
    assert done["kept"] == (done["mse_corrected"] < done["mse_plain"])


def test_bias_correction_after_matmul(tmp_path, fast_profile) -> None:
    model = models.token_mlp()
    data = load_data(CallableSpec(callable="tests.models:token_data"))
    ctx = make_ctx(model, data, fast_profile, tmp_path, classifier="head")
    ctx = replace(ctx, recovery=RecoverySpec(bias_correction=True))
    out = compress(model, Candidate(base_model="m", bits={"up": 4, "down": 8}), ctx, tmp_path / "q")
    assert out.report["quantize"]["bias_correction"]["layers"] == 2  # MatMul then Add


def test_distillation_recovers_and_replays(tiny_model, tiny_ctx, digits, tmp_path) -> None:
    candidate = Candidate(base_model="m", prune={"conv1": 0.5, "stem.0": 0.5})
    spec = DistillSpec(enabled=True, steps=60, lr=1e-3)
    ctx = replace(tiny_ctx, recovery=RecoverySpec(distill=spec))
    one = compress(tiny_model, candidate, ctx, tmp_path / "one")
    report = one.report["distilled"]
    assert report["steps"] == 60 and 0 < report["loss_after"] < 0.8 * report["loss_before"]
    x = {"image": digits.validation["image"][:128]}
    ref = predict(tiny_ctx.baseline_onnx, x)
    plain = compress(tiny_model, candidate, tiny_ctx, tmp_path / "plain")
    agree = [
        np.mean(predict(p, x).argmax(1) == ref.argmax(1)) for p in (plain.onnx_path, one.onnx_path)
    ]
    assert agree[1] >= agree[0]
    again = compress(tiny_model, candidate, ctx, tmp_path / "again")  # what export replays
    np.testing.assert_array_equal(predict(again.onnx_path, x), predict(one.onnx_path, x))
    # a quantize-only candidate leaves the float model alone: nothing to distill
    q = compress(tiny_model, Candidate(base_model="m", bits={"conv2": 8}), ctx, tmp_path / "q")
    assert "distilled" not in q.report


def test_distill_mse_for_regression_outputs() -> None:
    torch.manual_seed(0)
    teacher = torch.nn.Linear(8, 1)
    student = torch.nn.Linear(8, 1)
    inputs = (torch.randn(256, 8),)
    report = distill(student, teacher, inputs, DistillSpec(enabled=True, steps=200, lr=1e-2))
    assert report["loss_after"] < 0.1 * report["loss_before"]
    assert not any(p.requires_grad for p in student.parameters())


class _Embedder(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(8, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(self.proj(x), dim=-1)


def test_distill_auto_loss_is_mse_for_embeddings_and_kl_for_class_scores() -> None:
    torch.manual_seed(0)
    inputs = (torch.randn(256, 8),)
    spec = DistillSpec(enabled=True, steps=100, lr=1e-2)
    # L2-normalised rows are an embedding: KL would treat them as logits
    teacher, student = _Embedder(), _Embedder()
    report = distill(student, teacher, inputs, spec)
    assert report["loss"] == "mse"
    assert report["loss_after"] < 0.5 * report["loss_before"]
    classifier = torch.nn.Linear(8, 4)
    report = distill(torch.nn.Linear(8, 4), classifier, inputs, spec)
    assert report["loss"] == "kl"
    # the explicit setting wins over auto
    forced = DistillSpec(enabled=True, steps=1, loss="mse")
    assert distill(torch.nn.Linear(8, 4), classifier, inputs, forced)["loss"] == "mse"


def _chain(hidden_constant: float) -> torch.nn.Module:
    """Linear(6->8) -> ReLU -> Linear(8->3, no bias); hidden units 6 and 7 output a constant."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3, bias=False)
    )
    with torch.no_grad():
        model[0].weight[6:] = 0.0
        model[0].bias[6:] = hidden_constant
    return model.eval()


def _drop_last_hidden(model: torch.nn.Module, keep: int) -> torch.nn.Module:
    """The chain with only the first ``keep`` hidden units (pruned by hand)."""
    pruned = torch.nn.Sequential(
        torch.nn.Linear(6, keep), torch.nn.ReLU(), torch.nn.Linear(keep, 3, bias=False)
    )
    with torch.no_grad():
        pruned[0].weight.copy_(model[0].weight[:keep])
        pruned[0].bias.copy_(model[0].bias[:keep])
        pruned[2].weight.copy_(model[2].weight[:, :keep])
    return pruned.eval()


def test_reconstruction_restores_what_pruned_channels_carried() -> None:
    """Pruned units that carried a constant shift the output; re-fitting the next layer
    (with a bias it did not have) removes that shift exactly, and leaves the rest alone."""
    model = _chain(hidden_constant=2.0)
    x = torch.randn(256, 6, generator=torch.Generator().manual_seed(1))
    held_out = torch.randn(64, 6, generator=torch.Generator().manual_seed(2))
    pruned = _drop_last_hidden(model, keep=6)
    with torch.no_grad():
        ref, before = model(held_out), pruned(held_out)
    assert float((before - ref).abs().max()) > 0.1  # pruning alone moved the outputs
    errors = reconstruct(pruned, model, (x,), ReconstructSpec(enabled=True, ridge=0.0))
    assert list(errors) == ["2"] and errors["2"] < 1e-6
    assert pruned[2].bias is not None  # the constant went into a new bias
    with torch.no_grad():
        torch.testing.assert_close(pruned(held_out), ref, atol=1e-4, rtol=1e-4)
    # nothing lost input channels: nothing to re-fit
    assert reconstruct(_chain(2.0), model, (x,), ReconstructSpec(enabled=True)) == {}


@pytest.fixture()
def image_data() -> TaskData:
    x = np.random.default_rng(0).standard_normal((96, 1, 16, 16)).astype(np.float32)
    return TaskData(
        calibration={"image": x[:64]}, validation={"image": x[64:]}, targets=np.zeros(32)
    )


def test_reconstruction_on_a_pruned_mobilenet_replays_and_exports(image_data, tmp_path) -> None:
    """Real surgery: every expansion of an inverted-residual net pruned by half. Re-fitting the
    projections brings the outputs closer to the uncompressed model's than BatchNorm
    recalibration alone, export replays it bit for bit, and ONNX matches torch."""
    from tightfit.hardware_profiles import get_profile
    from tightfit.kernels.pruning import StructuredPruning

    model = models.tiny_mobilenet()
    ctx = make_ctx(model, image_data, get_profile("cpu-ort"), tmp_path, classifier="fc")
    units = StructuredPruning().units(model, ctx, SpaceSpec())
    expansions = {u.path: 0.5 for u in units if u.path.endswith("depthwise.0")}
    assert len(expansions) == 3
    candidate = Candidate(base_model="m", prune=expansions)
    spec = RecoverySpec(batchnorm=False, reconstruct=ReconstructSpec(enabled=True))
    fitted = compress(model, candidate, replace(ctx, recovery=spec), tmp_path / "fitted")
    assert fitted.report["reconstructed"]["layers"] == 3  # the three projections
    recalibrated = compress(model, candidate, ctx, tmp_path / "recalibrated")
    x = {"image": image_data.validation["image"]}
    ref = predict(ctx.baseline_onnx, x)
    err = [np.abs(predict(c.onnx_path, x) - ref).mean() for c in (recalibrated, fitted)]
    assert err[1] < 0.5 * err[0], err
    again = compress(model, candidate, replace(ctx, recovery=spec), tmp_path / "again")
    np.testing.assert_array_equal(predict(again.onnx_path, x), predict(fitted.onnx_path, x))
    with torch.no_grad():
        torch_out = fitted.model(torch.from_numpy(x["image"])).numpy()
    np.testing.assert_allclose(predict(fitted.onnx_path, x), torch_out, atol=1e-4, rtol=1e-3)


class _BodyHead(torch.nn.Module):
    """body (8 -> 8), head (8 -> 2): the output sees 2 of the body's 8 directions."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.body = torch.nn.Linear(8, width)
        self.head = torch.nn.Linear(width, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def test_distill_hidden_teaches_the_named_module_what_the_output_cannot() -> None:
    torch.manual_seed(0)
    teacher = _BodyHead()
    inputs = (torch.randn(256, 8),)

    def perturbed() -> _BodyHead:
        student = copy.deepcopy(teacher)
        noise = torch.randn(8, 8, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            student.body.weight.add_(0.5 * noise)
        return student

    def body_error(student: _BodyHead) -> float:
        with torch.no_grad():
            return float(F.mse_loss(student.body(inputs[0]), teacher.body(inputs[0])))

    spec = DistillSpec(enabled=True, steps=200, lr=1e-2, loss="mse")
    output_only, with_hidden = perturbed(), perturbed()
    start = body_error(output_only)
    report = distill(output_only, teacher, inputs, spec)
    assert "hidden" not in report
    report = distill(with_hidden, teacher, inputs, spec.model_copy(update={"hidden": ["body"]}))
    assert report["hidden"] == ["body"]
    assert report["loss_after"] < 0.1 * report["loss_before"]
    assert body_error(with_hidden) < 0.1 * start
    assert body_error(with_hidden) < 0.5 * body_error(output_only)  # the output fixes 2 of 8
    # a module the candidate lost, or whose output it pruned, fails the candidate, hooks removed
    with pytest.raises(CandidateError, match="the student has no module 'nope'"):
        distill(perturbed(), teacher, inputs, spec.model_copy(update={"hidden": ["nope"]}))
    narrow = _BodyHead(width=4)
    with pytest.raises(
        CandidateError, match=r"'body' outputs \(32, 4\) in the candidate, \(32, 8\)"
    ):
        distill(narrow, teacher, inputs, spec.model_copy(update={"hidden": ["body"]}))
    assert not teacher.body._forward_hooks and not narrow.body._forward_hooks
