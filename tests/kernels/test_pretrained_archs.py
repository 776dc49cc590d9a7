"""Every kernel on a tiny randomly initialised BERT (Hugging Face) and a MobileNet-style CNN:
the exported ONNX matches the compressed torch model, heads prune consistently, depthwise
convolutions are handled, and a no-op candidate is the baseline exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from tests import models
from tests.conftest import make_ctx
from tightfit.config import CallableSpec, SpaceSpec
from tightfit.evaluators import input_feed, predict
from tightfit.hardware_profiles import HardwareProfile
from tightfit.kernels import compress, discover_units
from tightfit.kernels._heads import find_attention
from tightfit.spaces import Candidate
from tightfit.task import TaskData, load_data

pytest.importorskip("transformers")

SPACE = SpaceSpec(quantize={"bits": [32, 8, 4]})


@pytest.fixture(scope="module")
def bert_data():
    return load_data(CallableSpec(callable="tests.models:token_id_data"))


@pytest.fixture()
def bert(bert_data, fast_profile: HardwareProfile, tmp_path: Path):
    model = models.tiny_bert()
    return model, make_ctx(model, bert_data, fast_profile, tmp_path, classifier=None)


@pytest.fixture(scope="module")
def image_data() -> TaskData:
    x = np.random.default_rng(0).standard_normal((48, 1, 16, 16)).astype(np.float32)
    return TaskData(calibration={"image": x[:32]}, validation={"image": x}, targets=np.zeros(48))


@pytest.fixture()
def mobilenet(image_data, fast_profile: HardwareProfile, tmp_path: Path):
    model = models.tiny_mobilenet()
    return model, make_ctx(model, image_data, fast_profile, tmp_path / "cnn", classifier="fc")


def _torch_outputs(model: nn.Module, inputs: dict[str, np.ndarray]) -> np.ndarray:
    with torch.no_grad():
        return model(*(torch.from_numpy(v) for v in inputs.values())).numpy()


def _strongest(units, knob: str) -> Candidate:
    params = {
        u.param_name: (min(u.choices) if knob == "rank" else u.choices[-1])
        for u in units
        if u.knob == knob
    }
    assert params, f"no {knob} unit"
    return Candidate.from_params("m", params)


def test_bert_units_cover_heads_ffn_ranks_and_bits(bert) -> None:
    model, ctx = bert
    units = discover_units(model, ctx, SPACE)
    prune = {u.path: u for u in units if u.knob == "prune_ratio"}
    assert set(prune) == {
        "bert.encoder.layer.0.attention.self",
        "bert.encoder.layer.1.attention.self",
        "bert.encoder.layer.0.intermediate.dense",
        "bert.encoder.layer.1.intermediate.dense",
    }  # never the hidden width (it includes the embeddings), never q/k/v channel by channel
    assert prune["bert.encoder.layer.0.attention.self"].choices == (0.0, 0.25, 0.5)  # of 4 heads
    ranks = {u.path for u in units if u.knob == "rank"}
    assert "bert.encoder.layer.1.attention.self.query" in ranks
    bits = {u.path: u.choices for u in units if u.knob == "bits"}
    assert bits["bert.encoder.layer.0.intermediate.dense"] == (32, 8, 4)  # MatMul: 4-bit applies


@pytest.mark.parametrize("knob", ["prune_ratio", "rank", "bits"])
def test_bert_onnx_matches_the_compressed_torch_model(knob, bert, bert_data, tmp_path) -> None:
    model, ctx = bert
    candidate = _strongest(discover_units(model, ctx, SPACE), knob)
    out = compress(model, candidate, ctx, tmp_path / knob)
    x = {k: v[:16] for k, v in bert_data.validation.items()}
    got, want = predict(out.onnx_path, x), _torch_outputs(out.model, x)
    if knob == "bits":  # int8 / 4-bit weights: close to the (float) torch model, not equal
        cos = np.sum(got * want, 1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1))
        assert cos.min() > 0.98
        assert not np.array_equal(got, want)
    else:
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)
        assert not np.allclose(want, _torch_outputs(model, x), atol=1e-3)  # it did something


def test_head_pruning_keeps_attention_consistent_and_runs_at_any_length(bert, tmp_path) -> None:
    model, ctx = bert
    plan = {"bert.encoder.layer.0.attention.self": 0.5, "bert.encoder.layer.1.attention.self": 0.25}
    out = compress(model, Candidate(base_model="m", prune=plan), ctx, tmp_path / "heads")
    kept = out.report["prune"]["kept_heads"]
    assert [len(v) for v in kept.values()] == [2, 3]
    for attention in find_attention(out.model):
        module = out.model.get_submodule(attention.path)
        width = module.num_attention_heads * module.attention_head_size
        assert module.all_head_size == width == module.query.out_features
        assert out.model.get_submodule(attention.out).in_features == width
    # the sequence axis stays dynamic: another length than the example's runs and matches
    ids = np.random.default_rng(1).integers(1, 200, size=(3, 29)).astype(np.int64)
    x = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    np.testing.assert_allclose(predict(out.onnx_path, x), _torch_outputs(out.model, x), atol=1e-4)


def test_noop_candidate_is_the_baseline_exactly(bert, bert_data, mobilenet, image_data, tmp_path):
    for (model, ctx), data in ((bert, bert_data), (mobilenet, image_data)):
        out = compress(model, Candidate(base_model="m"), ctx, tmp_path / type(model).__name__)
        x = {k: v[:16] for k, v in data.validation.items()}
        np.testing.assert_array_equal(predict(out.onnx_path, x), predict(ctx.baseline_onnx, x))


def test_dynamic_int8_quantizes_matmuls_with_matmulinteger(bert, bert_data, tmp_path) -> None:
    import onnx

    model, ctx = bert
    q = ctx.profile.quantization.model_copy(update={"int8_format": "dynamic"})
    ctx = type(ctx)(
        **{**ctx.__dict__, "profile": ctx.profile.model_copy(update={"quantization": q})}
    )
    units = discover_units(model, ctx, SPACE)
    candidate = Candidate.from_params("m", {u.param_name: 8 for u in units if u.knob == "bits"})
    out = compress(model, candidate, ctx, tmp_path / "dynamic")
    ops = {n.op_type for n in onnx.load(str(out.onnx_path)).graph.node}
    assert {"MatMulInteger", "DynamicQuantizeLinear"} <= ops and "QuantizeLinear" not in ops
    x = {k: v[:16] for k, v in bert_data.validation.items()}
    got, want = predict(out.onnx_path, x), predict(ctx.baseline_onnx, x)
    assert np.abs(got - want).max() < 0.1 * np.abs(want).max()


def test_latency_feed_takes_the_profiles_sequence_length(bert_data, fast_profile) -> None:
    shapes = {k: v.shape[1:] for k, v in bert_data.validation.items()}
    dtypes = {k: str(v.dtype) for k, v in bert_data.validation.items()}
    profile = fast_profile.model_copy(update={"sequence_length": 40, "batch_size": 2})
    feed = input_feed(shapes, dtypes, profile, seed=0)
    assert feed["input_ids"].shape == feed["attention_mask"].shape == (2, 40)
    assert feed["attention_mask"].all()  # every position attended: a full-length sequence


def test_mobilenet_depthwise_convs_prune_with_their_group_and_are_not_factorized(
    mobilenet, image_data, tmp_path
) -> None:
    model, ctx = mobilenet
    units = discover_units(model, ctx, SpaceSpec())
    depthwise = {p for p, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.groups > 1}
    assert not depthwise & {u.path for u in units if u.knob == "rank"}
    groups = [u for u in units if u.knob == "prune_ratio" and depthwise & set(u.info["members"])]
    assert groups, "the expand convs' groups must carry their depthwise convs"
    for knob in ("prune_ratio", "rank", "bits"):
        out = compress(model, _strongest(units, knob), ctx, tmp_path / knob)
        for p, m in out.model.named_modules():  # still depthwise: one group per channel
            if p in depthwise:
                assert m.groups == m.in_channels == m.out_channels
        x = {"image": image_data.validation["image"][:16]}
        got, want = predict(out.onnx_path, x), _torch_outputs(out.model, x)
        tol = 0.1 * np.abs(want).max() if knob == "bits" else 1e-4
        np.testing.assert_allclose(got, want, atol=tol, rtol=0 if knob == "bits" else 1e-4)
